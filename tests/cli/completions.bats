#!/usr/bin/env bats
# tests: completions (bash via compgen-driven COMPREPLY, zsh via compsys in a non-interactive shell)
load helpers

TOOLS="qcat qpack qcal qgptq qawq qprune qmix qeval"

complete_bash() {   # complete_bash WORD... — prints COMPREPLY for the last word
    bash -c '
        source "$0/completions/qpipe.bash"
        COMP_WORDS=("${@}"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
        _qpipe; printf "%s\n" "${COMPREPLY[@]}"' "$ROOT" "$@"
}

@test "bash completes every installed tool's options from its --help" {
    for t in $TOOLS; do
        command -v $t >/dev/null || continue
        out=$(complete_bash $t --h)
        [[ "$out" == *--help* ]] || { echo "$t: $out"; return 1; }
    done
}

@test "bash completes qcat's own options" {
    out=$(complete_bash qcat --inc)
    [ "$out" = "--include" ]
    out=$(complete_bash qpack --max-s)
    [ "$out" = "--max-shard-size" ]
    [ "$(complete_bash qpack --max-m)" = "--max-memory" ]
    [[ "$(complete_bash qgptq --max-memory 8)" == 8GB ]]
}

@test "bash completes option values: bits, grids, GGUF types, dtypes" {
    [ "$(complete_bash qgptq --bits 3)" = "3" ]
    [[ "$(complete_bash qgptq --grid q4)" == *q4_0* ]]
    [[ "$(complete_bash qpack --gguf q6)" == *q6_k* ]]
    [ "$(complete_bash qpack --dtype bf)" = "bf16" ]
}

@test "bash completes file arguments by kind" {
    mkdir -p m; touch a.qs b.txt c.safetensors d.u32
    [ "$(complete_bash qgptq --stats a)" = "a.qs" ]
    [ "$(complete_bash qeval m --text b)" = "b.txt" ]
    [ "$(complete_bash qeval m --tokens d)" = "d.u32" ]
    out=$(complete_bash qcat "")
    [[ "$out" == *c.safetensors* && "$out" == *m* && "$out" != *b.txt* ]]
}

complete_zsh() {   # complete_zsh "COMMAND LINE" — the matches compsys offers
    zsh -f "$ROOT/tests/cli/zsh-complete.zsh" "$ROOT" "$T" "$1"
}

@test "zsh compsys completes options and values" {
    command -v zsh >/dev/null || skip "zsh not installed (make deps installs it)"
    out=$(complete_zsh "qcat --inc")
    [[ "$out" == *include* ]] || { echo "$out"; return 1; }
    out=$(complete_zsh "qpack --dtype b")
    [[ "$out" == *bf16* ]] || { echo "$out"; return 1; }
}

#!/usr/bin/env zsh -f
# zsh-complete.zsh ROOT DIR "COMMAND LINE" — print what zsh's compsys offers
# for the line (as if TAB were pressed at its end), driving an interactive
# zsh in a pseudo-terminal (zsh/zpty); used by tests/cli/completions.bats.
root=$1 dir=$2 line=$3
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1=''; fpath=($root/completions \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' list-separator ''; setopt nobeep; unsetopt zle_bracketed_paste 2>/dev/null; cd $dir; print READY"
out=''
while zpty -r -t z chunk; do out+=$chunk; [[ $out == *READY* ]] && break; done
zpty -w -n z "$line"$'\t'
sleep 2
out=''
while zpty -r -t z chunk; do out+=$chunk; done
zpty -d z
print -r -- "$out"

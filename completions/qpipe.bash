# qpipe.bash — bash completion for every qpipe tool.
# Options come from the tool's own --help (so they never drift from the
# code); option values and file kinds come from the table below.
# Install: source it, or copy to /usr/share/bash-completion/completions/.

_qpipe_values() {   # option → candidate words (empty: complete files)
    case "$1" in
        --bits)                echo "2 3 4 5 6 7 8" ;;
        --group)               echo "-1 32 64 128 256" ;;
        --grid)                echo "int nf4 fp8_e4m3 fp8_e5m2 q4_0 q4_1 q5_0 q5_1 q8_0" ;;
        --gguf|--type)         echo "f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k q4_k_m q5_k_m auto" ;;
        --format)              echo "safetensors gptq awq compressed-tensors" ;;
        --dtype)               echo "f32 f16 bf16" ;;
        --threads)             echo "1 2 4 8 16" ;;
        --nm)                  echo "2:4 4:8 1:4" ;;
        --sparsity)            echo "0.25 0.5 0.6 0.7" ;;
        --samples)             echo "all 32 64 128 256" ;;
        --seqlen|--ctx)        echo "128 256 512 1024 2048" ;;
        --max-shard-size)      echo "500MB 1GB 2GB 5GB 10GB" ;;
        --max-memory)          echo "1GB 4GB 8GB 16GB 32GB 64GB" ;;
        --avg-bits)            echo "2.5 3 3.5 4 4.5" ;;
        --shard)               echo "1/2 2/2 1/4 2/4 3/4 4/4" ;;
        *)                     return 1 ;;
    esac
}

_qpipe_file_kind() {   # option → glob of the files it takes ("dir" for directories)
    case "$1" in
        --stats|--stats-out)   echo '@(qs|safetensors)' ;;
        --text)                echo 'txt' ;;
        --tokens|--tokens-out) echo 'u32' ;;
        --svg)                 echo 'svg' ;;
        -i|--input|--merge)    echo 'qs' ;;
        -o|--output)           echo 'any' ;;
        *)                     return 1 ;;
    esac
}

_qpipe_options() {   # cached list of a tool's long and short options
    local tool=$1 var="_qpipe_opts_${1//[^a-zA-Z0-9]/_}"
    if [ -z "${!var-}" ]; then
        printf -v "$var" '%s' "$("$tool" --help 2>/dev/null | grep -oE '(^|[ ,])--?[a-zA-Z][a-zA-Z0-9-]*' | tr -d ' ,' | sort -u | tr '\n' ' ')"
    fi
    echo "${!var}"
}

_qpipe() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} words kind
    COMPREPLY=()
    if words=$(_qpipe_values "$prev"); then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return 0
    fi
    if kind=$(_qpipe_file_kind "$prev"); then
        case "$kind" in
            any) COMPREPLY=($(compgen -f -- "$cur")) ;;
            *)   local IFS=$'\n'; shopt -s extglob
                 COMPREPLY=($(compgen -d -- "$cur") $(compgen -f -X "!*.$kind" -- "$cur")) ;;
        esac
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$(_qpipe_options "${COMP_WORDS[0]}")" -- "$cur"))
        return 0
    fi
    # positional arguments: checkpoints (directories, weight files, archives) or streams
    local IFS=$'\n'; shopt -s extglob
    COMPREPLY=($(compgen -d -- "$cur") $(compgen -f -X '!*.@(safetensors|json|bin|pt|pth|gguf|qs|tar|gz|zst|tgz|zip)' -- "$cur"))
    return 0
}

complete -o filenames -F _qpipe qcat qpack qcal qgptq qawq qprune qmix qeval

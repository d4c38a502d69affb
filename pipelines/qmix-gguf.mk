# pipelines/qmix-gguf.mk — mixed precision at 3.5 bits per weight, written as GGUF:
#   qcal MODEL --text TEXT -o OUT/cal.qs
#   qcat MODEL | qmix --stats OUT/cal.qs --avg-bits 3.5 --menu 'int:2,3,4,5,6:64;sym:8:32' \
#     --report OUT/alloc.txt > /dev/null                  # one setting per linear weight
#   awk ... OUT/alloc.txt > OUT/gguf-types.txt            # int3g64 -> q3_k, ... (table below)
#   qcat MODEL | qpack --gguf q4_k_m --stats OUT/cal.qs --type-for "$(cat OUT/gguf-types.txt)" -o OUT/model.gguf
# then qeval of MODEL and of OUT/model.gguf on EVAL, OUT/report.txt, OUT/provenance.txt.
#
# qmix chooses, per linear weight, the setting of its menu with the least
# estimated loss tr(dW H dW^T) under the budget; this recipe writes each choice
# as the llama.cpp type of (nearly) the same size, and qpack encodes it with
# the stats as importance weights. The default menu's sizes are those of the
# GGUF types up to 1/16 bit (qmix counts codes plus f16 scale and zero per
# group): int2g64 2.5 -> q2_k 2.625, int3g64 3.5 -> q3_k 3.4375, int4g64 4.5
# -> q4_k 4.5, int5g64 5.5 -> q5_k 5.5, int6g64 6.5 -> q6_k 6.5625, sym8g32 8.5
# -> q8_0 8.5 bits per weight; exact too: sym4g32 -> q4_0, int4g32 -> q4_1,
# sym5g32 -> q5_0, int5g32 -> q5_1, f16 -> f16. A menu setting without a GGUF
# type stops the recipe. The other tensors (embeddings, output, norms) follow
# QMIX_GGUF_BASE's llama-quantize rules. report.txt gives the real size.
#
#   make -f pipelines/qmix-gguf.mk MODEL=path OUT=dir TEXT=calib.txt [BITS=3.5 EVAL=... THREADS=N]
#   make -n -f pipelines/qmix-gguf.mk ...     # the plan
#
# Knobs (each QMIX_GGUF_X defaults to the shared X): MODEL, OUT (default
# out/qmix-gguf), TEXT, EVAL (optional), THREADS, CAL_OPTS, EVAL_OPTS, and:
#   QMIX_GGUF_BITS       default $(BITS), else 3.5: qmix --avg-bits
#   QMIX_GGUF_MENU       qmix --menu (default int:2,3,4,5,6:64;sym:8:32)
#   QMIX_GGUF_QMIX_OPTS  more qmix options (e.g. --gptq, --measure-text calib.txt)
#   QMIX_GGUF_BASE       qpack --gguf type for the rest (default q4_k_m)
#   QMIX_GGUF_PACK_OPTS  more qpack options
# Internal names start with qmix_gguf_. See pipelines/README.md.

qmix_gguf_top  := $(filter 1,$(words $(MAKEFILE_LIST)))
qmix_gguf_goal := $(.DEFAULT_GOAL)

QMIX_GGUF_BITS      ?= $(if $(BITS),$(BITS),3.5)
QMIX_GGUF_MENU      ?= int:2,3,4,5,6:64;sym:8:32
QMIX_GGUF_QMIX_OPTS ?=
QMIX_GGUF_BASE      ?= q4_k_m
QMIX_GGUF_PACK_OPTS ?=

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
$(eval $(call qpipe_begin,QMIX_GGUF_,qmix_gguf_,qmix-gguf,cal))

qmix_gguf_alloc          := $(qmix_gguf_o)/alloc.txt
qmix_gguf_types          := $(qmix_gguf_o)/gguf-types.txt
qmix_gguf_output         := $(qmix_gguf_o)/model.gguf
qmix_gguf_output_weights := $(qmix_gguf_output)
qmix_gguf_done           := $(qmix_gguf_output)
qmix_gguf_clean_extra    := $(qmix_gguf_alloc) $(qmix_gguf_types)
qmix_gguf_tools          := $(qpipe_qcat) $(qpipe_qmix) $(qpipe_qpack)

# the allocation table's rows: tensor, setting, bits/w, loss; one GLOB=TYPE per tensor out
qmix_gguf_awk := BEGIN { split("int2g64 q2_k int3g64 q3_k int4g64 q4_k int5g64 q5_k int6g64 q6_k sym8g32 q8_0 \
  sym4g32 q4_0 int4g32 q4_1 sym5g32 q5_0 int5g32 q5_1 f16 f16", a, " "); for (i = 1; i < 22; i += 2) t[a[i]] = a[i + 1] } \
  $$1 == "tensor" { next } $$1 == "total:" { exit } \
  NF >= 3 { if (!($$2 in t)) { print "qmix-gguf.mk: no GGUF type for setting " $$2 > "/dev/stderr"; bad = 1; exit 1 } \
            printf "%s%s=%s", n++ ? "," : "", $$1, t[$$2] } \
  END { if (bad) exit 1; if (!n) { print "qmix-gguf.mk: empty allocation" > "/dev/stderr"; exit 1 } print "" }

qmix_gguf_cmd_alloc = $(qpipe_qcat) $(qmix_gguf_model) \
  | $(qpipe_qmix) --stats $(qmix_gguf_cal) --avg-bits $(QMIX_GGUF_BITS) --menu '$(QMIX_GGUF_MENU)' $(QMIX_GGUF_QMIX_OPTS) \
    $(qmix_gguf_t) --report $(qmix_gguf_alloc).tmp -q > /dev/null
qmix_gguf_cmd_alloc_label := alloc.txt
qmix_gguf_cmd_types = awk '$(qmix_gguf_awk)' $(qmix_gguf_alloc)
qmix_gguf_cmd_types_label := gguf-types.txt
qmix_gguf_extra_cmds := qmix_gguf_cmd_alloc qmix_gguf_cmd_types
qmix_gguf_cmd_model = $(qpipe_qcat) $(qmix_gguf_model) \
  | $(qpipe_qpack) --gguf $(QMIX_GGUF_BASE) --stats $(qmix_gguf_cal) --type-for "$$(cat $(qmix_gguf_types))" \
    $(QMIX_GGUF_PACK_OPTS) -o $(qmix_gguf_output)

$(qmix_gguf_alloc): $(qmix_gguf_model_files) $(qmix_gguf_cal) $(qpipe_qcat) $(qpipe_qmix) \
                    $(call qpipe_stamp,qmix_gguf_,alloc,qmix_gguf_cmd_alloc)
	$(qmix_gguf_need)$(qmix_gguf_cmd_alloc)
	mv $@.tmp $@
$(qmix_gguf_types): $(qmix_gguf_alloc)
	$(qmix_gguf_cmd_types) > $@.tmp && mv $@.tmp $@
$(qmix_gguf_done): $(qmix_gguf_model_files) $(qmix_gguf_cal) $(qmix_gguf_types) $(qpipe_qcat) $(qpipe_qpack) \
                   $(call qpipe_stamp,qmix_gguf_,model,qmix_gguf_cmd_model)
	$(qmix_gguf_need)$(qmix_gguf_cmd_model)

$(qmix_gguf_alloc) $(qmix_gguf_types): private SHELL := /bin/bash
$(qmix_gguf_alloc) $(qmix_gguf_types): private .SHELLFLAGS := -o pipefail -c
$(eval $(call qpipe_stamp_rule,$(call qpipe_stamp,qmix_gguf_,alloc,qmix_gguf_cmd_alloc),alloc,qmix_gguf_cmd_alloc,qmix_gguf_))
$(eval $(call qpipe_end,QMIX_GGUF_,qmix_gguf_,qmix-gguf))

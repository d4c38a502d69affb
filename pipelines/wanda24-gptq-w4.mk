# pipelines/wanda24-gptq-w4.mk — Wanda 2:4 sparsity, then GPTQ 4-bit (groups of 128) on
# the kept weights, as a GPTQ checkpoint:
#   qcal MODEL --text TEXT -o OUT/cal.qs
#   qcat MODEL | qprune --wanda 2:4 --stats OUT/cal.qs \
#     | qgptq --bits 4 --group 128 --f16-scales --stats OUT/cal.qs | qpack --format gptq -o OUT/model/
# then qeval of MODEL and of OUT/model/ on EVAL, OUT/report.txt, OUT/provenance.txt.
# qprune marks its zeros (attrs.mask), and qgptq keeps them at zero.
#
#   make -f pipelines/wanda24-gptq-w4.mk MODEL=path OUT=dir TEXT=calib.txt [EVAL=eval.txt THREADS=N]
#   make -n -f pipelines/wanda24-gptq-w4.mk ...  # the plan
#
# Knobs (each WANDA24_X defaults to the shared X): MODEL, OUT (default
# out/wanda24-gptq-w4), TEXT, EVAL (optional), THREADS, CAL_OPTS, EVAL_OPTS, and:
#   WANDA24_PRUNE_OPTS  qprune options (default --wanda 2:4; e.g. --sparsegpt 2:4)
#   WANDA24_GPTQ_OPTS   qgptq options (default --bits 4 --group 128 --f16-scales)
#   WANDA24_PACK_OPTS   qpack options (default --format gptq; --dtype bf16 writes the
#                       dequantized sparse weights as a plain checkpoint)
# Internal names start with wanda24_. See pipelines/README.md.

wanda24_top  := $(filter 1,$(words $(MAKEFILE_LIST)))
wanda24_goal := $(.DEFAULT_GOAL)

WANDA24_PRUNE_OPTS ?= --wanda 2:4
WANDA24_GPTQ_OPTS  ?= --bits 4 --group 128 --f16-scales
WANDA24_PACK_OPTS  ?= --format gptq

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
$(eval $(call qpipe_begin,WANDA24_,wanda24_,wanda24-gptq-w4,cal))

wanda24_output         := $(wanda24_o)/model
wanda24_output_weights := $(wanda24_output)/*.safetensors
wanda24_done           := $(wanda24_o)/.qpipe/model.done
wanda24_tools          := $(qpipe_qcat) $(qpipe_qprune) $(qpipe_qgptq) $(qpipe_qpack)
wanda24_cmd_model = $(qpipe_qcat) $(wanda24_model) \
  | $(qpipe_qprune) $(WANDA24_PRUNE_OPTS) --stats $(wanda24_cal) $(wanda24_t) \
  | $(qpipe_qgptq) $(WANDA24_GPTQ_OPTS) --stats $(wanda24_cal) $(wanda24_t) \
  | $(qpipe_qpack) $(WANDA24_PACK_OPTS) -o $(wanda24_output)/

$(wanda24_done): $(wanda24_model_files) $(wanda24_cal) $(wanda24_tools) \
                 $(call qpipe_stamp,wanda24_,model,wanda24_cmd_model)
	$(wanda24_need)rm -rf $(wanda24_output)
	$(wanda24_cmd_model)
	touch $@

$(eval $(call qpipe_end,WANDA24_,wanda24_,wanda24-gptq-w4))

# pipelines/gptq-w4g128.mk — GPTQ 4-bit, groups of 128, as a GPTQ checkpoint
# (AutoGPTQ layout: qweight/qzeros/scales int32-packed, quantize_config.json):
#   qcal MODEL --text TEXT -o OUT/cal.qs
#   qcat MODEL | qgptq --bits 4 --group 128 --f16-scales --stats OUT/cal.qs | qpack --format gptq -o OUT/model/
# then qeval of MODEL and of OUT/model/ on EVAL, OUT/report.txt, OUT/provenance.txt.
# --f16-scales makes qgptq choose its codes against the f16 scales the
# checkpoint stores, so packing is exact.
#
#   make -f pipelines/gptq-w4g128.mk MODEL=path OUT=dir TEXT=calib.txt [EVAL=eval.txt THREADS=N]
#   make -n -f pipelines/gptq-w4g128.mk ...   # the plan: the commands make would run
#
# Knobs (each GPTQ_W4G128_X defaults to the shared X): MODEL, OUT (default
# out/gptq-w4g128), TEXT, EVAL (optional), THREADS, CAL_OPTS, EVAL_OPTS, and:
#   GPTQ_W4G128_GPTQ_OPTS  qgptq options (default --bits 4 --group 128 --f16-scales;
#                          add --act-order --sym ... as you like)
#   GPTQ_W4G128_FORMAT     gptq (default), gptq_v2, compressed-tensors (vLLM)
#   GPTQ_W4G128_PACK_OPTS  more qpack options (e.g. --max-shard-size 5GB)
# Internal names start with gptq_w4g128_. See pipelines/README.md.

gptq_w4g128_top  := $(filter 1,$(words $(MAKEFILE_LIST)))
gptq_w4g128_goal := $(.DEFAULT_GOAL)

GPTQ_W4G128_GPTQ_OPTS ?= --bits 4 --group 128 --f16-scales
GPTQ_W4G128_FORMAT    ?= gptq
GPTQ_W4G128_PACK_OPTS ?=

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
$(eval $(call qpipe_begin,GPTQ_W4G128_,gptq_w4g128_,gptq-w4g128,cal))

gptq_w4g128_output         := $(gptq_w4g128_o)/model
gptq_w4g128_output_weights := $(gptq_w4g128_output)/*.safetensors
gptq_w4g128_done           := $(gptq_w4g128_o)/.qpipe/model.done
gptq_w4g128_tools          := $(qpipe_qcat) $(qpipe_qgptq) $(qpipe_qpack)
gptq_w4g128_cmd_model = $(qpipe_qcat) $(gptq_w4g128_model) \
  | $(qpipe_qgptq) $(GPTQ_W4G128_GPTQ_OPTS) --stats $(gptq_w4g128_cal) $(gptq_w4g128_t) \
  | $(qpipe_qpack) --format $(GPTQ_W4G128_FORMAT) $(GPTQ_W4G128_PACK_OPTS) -o $(gptq_w4g128_output)/

$(gptq_w4g128_done): $(gptq_w4g128_model_files) $(gptq_w4g128_cal) $(gptq_w4g128_tools) \
                     $(call qpipe_stamp,gptq_w4g128_,model,gptq_w4g128_cmd_model)
	$(gptq_w4g128_need)rm -rf $(gptq_w4g128_output)
	$(gptq_w4g128_cmd_model)
	touch $@

$(eval $(call qpipe_end,GPTQ_W4G128_,gptq_w4g128_,gptq-w4g128))

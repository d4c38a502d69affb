# pipelines/rtn-gguf.mk — round-to-nearest GGUF, the llama-quantize job (no calibration):
#   qcat MODEL | qpack --gguf q4_0 -o OUT/model.gguf
# then qeval of MODEL and of OUT/model.gguf on EVAL, OUT/report.txt, OUT/provenance.txt.
#
#   make -f pipelines/rtn-gguf.mk MODEL=path OUT=dir [TYPE=q8_0 EVAL=eval.txt THREADS=N]
#   make -n -f pipelines/rtn-gguf.mk ...      # the plan: the commands make would run
#
# Knobs (each RTN_GGUF_X defaults to the shared X): MODEL, OUT (default out/rtn-gguf),
# EVAL (optional), THREADS, EVAL_OPTS, and:
#   RTN_GGUF_TYPE       default $(TYPE), else q4_0: any `qpack --gguf` type (q8_0, q4_0, q4_1,
#                       q5_0, q5_1, q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k, f16, ...); the type of
#                       each tensor follows llama-quantize's rules for that file type
#   RTN_GGUF_PACK_OPTS  more qpack options (e.g. --type-for '*.down_proj.weight=q8_0')
# Internal names start with rtn_gguf_. See pipelines/README.md.

rtn_gguf_top  := $(filter 1,$(words $(MAKEFILE_LIST)))
rtn_gguf_goal := $(.DEFAULT_GOAL)

RTN_GGUF_TYPE      ?= $(if $(TYPE),$(TYPE),q4_0)
RTN_GGUF_PACK_OPTS ?=

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
$(eval $(call qpipe_begin,RTN_GGUF_,rtn_gguf_,rtn-gguf))

rtn_gguf_output         := $(rtn_gguf_o)/model.gguf
rtn_gguf_output_weights := $(rtn_gguf_output)
rtn_gguf_done           := $(rtn_gguf_output)
rtn_gguf_tools          := $(qpipe_qcat) $(qpipe_qpack)
rtn_gguf_cmd_model = $(qpipe_qcat) $(rtn_gguf_model) \
  | $(qpipe_qpack) --gguf $(RTN_GGUF_TYPE) $(RTN_GGUF_PACK_OPTS) -o $(rtn_gguf_output)

$(rtn_gguf_done): $(rtn_gguf_model_files) $(rtn_gguf_tools) \
                  $(call qpipe_stamp,rtn_gguf_,model,rtn_gguf_cmd_model)
	$(rtn_gguf_need)$(rtn_gguf_cmd_model)

$(eval $(call qpipe_end,RTN_GGUF_,rtn_gguf_,rtn-gguf))

# pipelines/awq-w4.mk — AWQ 4-bit (groups of 128) as an AWQ checkpoint (AutoAWQ GEMM layout):
#   qcal MODEL --text TEXT -o OUT/cal.qs
#   qcat MODEL | qawq --stats OUT/cal.qs --bits 4 --group 128 | qpack --format awq --round-scales -o OUT/model/
# then qeval of MODEL and of OUT/model/ on EVAL, OUT/report.txt, OUT/provenance.txt.
# qawq searches per-channel scales (and clipping) on the stats, folds them into
# the norms and linears, and rounds to the grid; the AWQ layout stores f16
# scales, so qpack rounds them (--round-scales).
#
#   make -f pipelines/awq-w4.mk MODEL=path OUT=dir TEXT=calib.txt [EVAL=eval.txt THREADS=N]
#   make -n -f pipelines/awq-w4.mk ...        # the plan: the commands make would run
#
# Knobs (each AWQ_W4_X defaults to the shared X): MODEL, OUT (default out/awq-w4),
# TEXT, EVAL (optional), THREADS, CAL_OPTS, EVAL_OPTS, and:
#   AWQ_W4_AWQ_OPTS   qawq options (default --bits 4 --group 128; e.g. add --duo, --n-grid 10)
#   AWQ_W4_FORMAT     awq (default) or compressed-tensors
#   AWQ_W4_PACK_OPTS  more qpack options (default --round-scales)
# Internal names start with awq_w4_. See pipelines/README.md.

awq_w4_top  := $(filter 1,$(words $(MAKEFILE_LIST)))
awq_w4_goal := $(.DEFAULT_GOAL)

AWQ_W4_AWQ_OPTS  ?= --bits 4 --group 128
AWQ_W4_FORMAT    ?= awq
AWQ_W4_PACK_OPTS ?= --round-scales

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
$(eval $(call qpipe_begin,AWQ_W4_,awq_w4_,awq-w4,cal))

awq_w4_output         := $(awq_w4_o)/model
awq_w4_output_weights := $(awq_w4_output)/*.safetensors
awq_w4_done           := $(awq_w4_o)/.qpipe/model.done
awq_w4_tools          := $(qpipe_qcat) $(qpipe_qawq) $(qpipe_qpack)
awq_w4_cmd_model = $(qpipe_qcat) $(awq_w4_model) \
  | $(qpipe_qawq) --stats $(awq_w4_cal) $(AWQ_W4_AWQ_OPTS) $(awq_w4_t) \
  | $(qpipe_qpack) --format $(AWQ_W4_FORMAT) $(AWQ_W4_PACK_OPTS) -o $(awq_w4_output)/

$(awq_w4_done): $(awq_w4_model_files) $(awq_w4_cal) $(awq_w4_tools) \
                $(call qpipe_stamp,awq_w4_,model,awq_w4_cmd_model)
	$(awq_w4_need)rm -rf $(awq_w4_output)
	$(awq_w4_cmd_model)
	touch $@

$(eval $(call qpipe_end,AWQ_W4_,awq_w4_,awq-w4))

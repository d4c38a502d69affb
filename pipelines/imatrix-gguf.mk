# pipelines/imatrix-gguf.mk — importance-weighted GGUF (llama.cpp's imatrix, from qcal's stats):
#   qcal MODEL --text TEXT -o OUT/cal.qs
#   qcat MODEL | qpack --gguf q4_k_m --stats OUT/cal.qs -o OUT/model.gguf
# then qeval of MODEL and of OUT/model.gguf on EVAL, OUT/report.txt, OUT/provenance.txt.
# qpack weights each tensor's rounding error by the stats' per-input x2_mean
# (the mean of x_j², what llama-imatrix collects) when it picks block scales.
#
#   make -f pipelines/imatrix-gguf.mk MODEL=path OUT=dir TEXT=calib.txt [TYPE=q3_k_m EVAL=... THREADS=N]
#   make -n -f pipelines/imatrix-gguf.mk ...  # the plan: the commands make would run
#
# Knobs (each IMATRIX_GGUF_X defaults to the shared X): MODEL, OUT (default
# out/imatrix-gguf), TEXT, EVAL (optional), THREADS, CAL_OPTS, EVAL_OPTS, and:
#   IMATRIX_GGUF_TYPE       default $(TYPE), else q4_k_m: a `qpack --gguf` type
#   IMATRIX_GGUF_PACK_OPTS  more qpack options (--type-for ...)
# Internal names start with imatrix_gguf_. See pipelines/README.md.

imatrix_gguf_top  := $(filter 1,$(words $(MAKEFILE_LIST)))
imatrix_gguf_goal := $(.DEFAULT_GOAL)

IMATRIX_GGUF_TYPE      ?= $(if $(TYPE),$(TYPE),q4_k_m)
IMATRIX_GGUF_PACK_OPTS ?=

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
$(eval $(call qpipe_begin,IMATRIX_GGUF_,imatrix_gguf_,imatrix-gguf,cal))

imatrix_gguf_output         := $(imatrix_gguf_o)/model.gguf
imatrix_gguf_output_weights := $(imatrix_gguf_output)
imatrix_gguf_done           := $(imatrix_gguf_output)
imatrix_gguf_tools          := $(qpipe_qcat) $(qpipe_qpack)
imatrix_gguf_cmd_model = $(qpipe_qcat) $(imatrix_gguf_model) \
  | $(qpipe_qpack) --gguf $(IMATRIX_GGUF_TYPE) --stats $(imatrix_gguf_cal) $(IMATRIX_GGUF_PACK_OPTS) -o $(imatrix_gguf_output)

$(imatrix_gguf_done): $(imatrix_gguf_model_files) $(imatrix_gguf_cal) $(imatrix_gguf_tools) \
                      $(call qpipe_stamp,imatrix_gguf_,model,imatrix_gguf_cmd_model)
	$(imatrix_gguf_need)$(imatrix_gguf_cmd_model)

$(eval $(call qpipe_end,IMATRIX_GGUF_,imatrix_gguf_,imatrix-gguf))

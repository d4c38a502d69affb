# pipelines/gptq-gguf.mk — GPTQ onto llama.cpp's 4-bit blocks, written as GGUF:
#   qcal MODEL --text TEXT -o OUT/cal.qs
#   qcat MODEL | qgptq --grid q4_0 --stats OUT/cal.qs | qpack --gguf q4_0 -o OUT/model.gguf
# then qeval of MODEL and of OUT/model.gguf on EVAL, OUT/report.txt, OUT/provenance.txt.
#
#   make -f pipelines/gptq-gguf.mk MODEL=path OUT=dir TEXT=calib.txt [EVAL=eval.txt THREADS=N]
#   make -n -f pipelines/gptq-gguf.mk ...     # the plan: the commands make would run
#
# Knobs (each GPTQ_GGUF_X defaults to the shared X; set the prefixed one when a
# Makefile includes several recipes): MODEL, OUT (default out/gptq-gguf), TEXT,
# EVAL (optional), THREADS, CAL_OPTS (e.g. --samples 128 --seqlen 2048),
# EVAL_OPTS (e.g. --ctx 512), and:
#   GPTQ_GGUF_TYPE       q4_0 (default), q4_1, q5_0, q5_1, q8_0: the grid GPTQ rounds
#                        to is exactly that GGUF block type, so qpack stores the blocks as they are
#   GPTQ_GGUF_GPTQ_OPTS  more qgptq options (e.g. --damp 0.02; GGUF grids take no --act-order)
#   GPTQ_GGUF_PACK_OPTS  more qpack options (e.g. --type-for '*.down_proj.weight=q8_0')
# Internal names start with gptq_gguf_. See pipelines/README.md.

gptq_gguf_top  := $(filter 1,$(words $(MAKEFILE_LIST)))
gptq_gguf_goal := $(.DEFAULT_GOAL)

GPTQ_GGUF_TYPE      ?= q4_0
GPTQ_GGUF_GPTQ_OPTS ?=
GPTQ_GGUF_PACK_OPTS ?=

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
$(eval $(call qpipe_begin,GPTQ_GGUF_,gptq_gguf_,gptq-gguf,cal))

gptq_gguf_output         := $(gptq_gguf_o)/model.gguf
gptq_gguf_output_weights := $(gptq_gguf_output)
gptq_gguf_done           := $(gptq_gguf_output)
gptq_gguf_tools          := $(qpipe_qcat) $(qpipe_qgptq) $(qpipe_qpack)
gptq_gguf_cmd_model = $(qpipe_qcat) $(gptq_gguf_model) \
  | $(qpipe_qgptq) --grid $(GPTQ_GGUF_TYPE) $(GPTQ_GGUF_GPTQ_OPTS) --stats $(gptq_gguf_cal) $(gptq_gguf_t) \
  | $(qpipe_qpack) --gguf $(GPTQ_GGUF_TYPE) $(GPTQ_GGUF_PACK_OPTS) -o $(gptq_gguf_output)

$(gptq_gguf_done): $(gptq_gguf_model_files) $(gptq_gguf_cal) $(gptq_gguf_tools) \
                   $(call qpipe_stamp,gptq_gguf_,model,gptq_gguf_cmd_model)
	$(gptq_gguf_need)$(gptq_gguf_cmd_model)

$(eval $(call qpipe_end,GPTQ_GGUF_,gptq_gguf_,gptq-gguf))

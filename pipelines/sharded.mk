# pipelines/sharded.mk — the quantization split over N independent shards of the
# tensors (one process each; `make -j` runs them side by side), then merged:
#   qcal MODEL --text TEXT -o OUT/cal.qs
#   qcat --shard K/N MODEL | qgptq --grid q4_0 --stats OUT/cal.qs > OUT/parts/part-K-of-N.qs   (K = 1..N)
#   qpack --gguf q4_0 -o OUT/model.gguf --merge OUT/parts/part-1-of-N.qs ... OUT/parts/part-N-of-N.qs
# then qeval of MODEL and of the output on EVAL, OUT/report.txt, OUT/provenance.txt.
#
# Once the calibration stats exist, every tensor is quantized on its own:
# `qcat --shard K/N` selects a subset balanced by bytes, planned in the
# model's name order, and `qpack --merge` writes the parts as one checkpoint
# in that order, so the result has the same tensors, bytes, layout and index
# as a single `qcat | qgptq | qpack` run; only the embedded provenance differs
# (it records the first part's chain, with its --shard 1/N, and the --merge).
# The same split on several machines with GNU parallel: docs/recipes.md.
#
#   make -j4 -f pipelines/sharded.mk MODEL=path OUT=dir TEXT=calib.txt SHARDS=4 THREADS=1
#   make -n -f pipelines/sharded.mk ...       # the plan
#
# Knobs (each SHARDED_X defaults to the shared X): MODEL, OUT (default out/sharded),
# TEXT, EVAL (optional), THREADS (per shard process), CAL_OPTS, EVAL_OPTS, and:
#   SHARDED_N          default $(SHARDS), else 2: the number of parts
#   SHARDED_GPTQ_OPTS  qgptq options (default --grid q4_0)
#   SHARDED_PACK_OPTS  qpack options of the merge (default --gguf q4_0)
#   SHARDED_OUTPUT     the output's name in OUT (default model.gguf; a name ending in / is
#                      a model directory, e.g. with SHARDED_GPTQ_OPTS='--bits 4 --group 128
#                      --f16-scales' SHARDED_PACK_OPTS='--format gptq --max-shard-size 5GB')
# Internal names start with sharded_. See pipelines/README.md.

sharded_top  := $(filter 1,$(words $(MAKEFILE_LIST)))
sharded_goal := $(.DEFAULT_GOAL)

SHARDED_N         ?= $(if $(SHARDS),$(SHARDS),2)
SHARDED_GPTQ_OPTS ?= --grid q4_0
SHARDED_PACK_OPTS ?= --gguf q4_0
SHARDED_OUTPUT    ?= model.gguf

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
$(eval $(call qpipe_begin,SHARDED_,sharded_,sharded,cal))

sharded_dir_out := $(filter %/,$(SHARDED_OUTPUT))
sharded_output  := $(sharded_o)/$(patsubst %/,%,$(SHARDED_OUTPUT))
sharded_output_weights := $(if $(sharded_dir_out),$(sharded_output)/*.safetensors,$(sharded_output))
sharded_done    := $(if $(sharded_dir_out),$(sharded_o)/.qpipe/model.done,$(sharded_output))
sharded_tools   := $(qpipe_qcat) $(qpipe_qgptq) $(qpipe_qpack)
sharded_ks      := $(shell seq 1 $(SHARDED_N))
sharded_part     = $(sharded_o)/parts/part-$(1)-of-$(SHARDED_N).qs
sharded_parts   := $(foreach k,$(sharded_ks),$(call sharded_part,$(k)))
sharded_clean_extra := $(sharded_o)/parts

# the command of part K (the same for every K but the --shard argument)
sharded_cmd_part = $(qpipe_qcat) --shard $(1)/$(SHARDED_N) $(sharded_model) \
  | $(qpipe_qgptq) $(SHARDED_GPTQ_OPTS) --stats $(sharded_cal) $(sharded_t)
$(foreach k,$(sharded_ks),$(eval sharded_cmd_part_$(k) = $$(call sharded_cmd_part,$(k)))\
  $(eval sharded_cmd_part_$(k)_label := parts/$(notdir $(call sharded_part,$(k)))))
sharded_extra_cmds := $(foreach k,$(sharded_ks),sharded_cmd_part_$(k))
sharded_cmd_model = $(qpipe_qpack) $(SHARDED_PACK_OPTS) -o $(sharded_output)$(if $(sharded_dir_out),/) --merge $(sharded_parts)

# one stamp for all parts: the command of part 1 (N is in it)
sharded_part_stamp := $(call qpipe_stamp,sharded_,parts,sharded_cmd_part_1)
$(eval $(call qpipe_stamp_rule,$(sharded_part_stamp),parts,sharded_cmd_part_1,sharded_))

$(sharded_parts): $(sharded_o)/parts/part-%-of-$(SHARDED_N).qs: $(sharded_model_files) $(sharded_cal) \
                  $(qpipe_qcat) $(qpipe_qgptq) $(sharded_part_stamp)
	$(sharded_need)@mkdir -p $(@D)
	$(call sharded_cmd_part,$*) > $@.tmp && mv $@.tmp $@

$(sharded_done): $(sharded_parts) $(qpipe_qpack) $(call qpipe_stamp,sharded_,model,sharded_cmd_model)
	$(if $(sharded_dir_out),rm -rf $(sharded_output))
	$(sharded_cmd_model)
	$(if $(sharded_dir_out),touch $@)

$(sharded_parts): private SHELL := /bin/bash
$(sharded_parts): private .SHELLFLAGS := -o pipefail -c
$(eval $(call qpipe_end,SHARDED_,sharded_,sharded))

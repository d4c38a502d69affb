# pipelines/common.mk — machinery shared by the qpipe recipes (pipelines/*.mk).
# Not a recipe itself: every recipe includes it. Owns: where the tools are,
# a model's file list, option stamps, and the steps every recipe has
# (calibration stats, eval of the model and of the output, report.txt,
# provenance.txt, the phony targets). See pipelines/README.md.
#
# Including it defines variables and functions and nothing else (no rule, no
# goal; the only commands run while make reads it are read-only: `command -v
# qcat` when QPIPE_BIN is unset, `cksum` of each step's command); including it
# twice is harmless. Internal names start with qpipe_. The recipes' rules run
# their commands with bash -o pipefail (target-specific and private, so a
# user's own targets keep their shell).
#
# A recipe file looks like this (PREFIX_ = its knob prefix, prefix_ = its
# internal prefix; see gptq-gguf.mk for a commented one):
#   prefix_top  := $(filter 1,$(words $(MAKEFILE_LIST)))   # run with -f, not included
#   prefix_goal := $(.DEFAULT_GOAL)
#   PREFIX_KNOB ?= default ...
#   include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
#   $(eval $(call qpipe_begin,PREFIX_,prefix_,name,cal))    # knobs, cal.qs step
#   prefix_output := $(prefix_o)/model.gguf                 # what the recipe makes
#   prefix_done   := $(prefix_output)                       # its make target
#   prefix_tools  := $(qpipe_qcat) $(qpipe_qpack)           # tools of that step
#   prefix_cmd_model = ... command, $(prefix_t) where --threads goes ...
#   $(prefix_done): $(prefix_model_files) $(prefix_tools) $(call qpipe_stamp,prefix_,model,prefix_cmd_model)
#   	$(prefix_cmd_model)
#   $(eval $(call qpipe_end,PREFIX_,prefix_,name))          # eval, report, provenance

ifndef qpipe_common_mk
qpipe_common_mk := $(abspath $(lastword $(MAKEFILE_LIST)))
qpipe_dir := $(patsubst %/,%,$(dir $(qpipe_common_mk)))

# QPIPE_BIN: the directory of the qpipe tools. Default: the bin/ of the source
# tree this file is in, when built; otherwise the directory of `qcat` on PATH.
ifeq ($(origin QPIPE_BIN),undefined)
QPIPE_BIN := $(if $(wildcard $(qpipe_dir)/../bin/qcat),$(abspath $(qpipe_dir)/../bin),$(patsubst %/,%,$(dir $(shell command -v qcat 2>/dev/null))))
endif
qpipe_qcat   = $(QPIPE_BIN)/qcat
qpipe_qcal   = $(QPIPE_BIN)/qcal
qpipe_qprune = $(QPIPE_BIN)/qprune
qpipe_qawq   = $(QPIPE_BIN)/qawq
qpipe_qmix   = $(QPIPE_BIN)/qmix
qpipe_qgptq  = $(QPIPE_BIN)/qgptq
qpipe_qpack  = $(QPIPE_BIN)/qpack
qpipe_qeval  = $(QPIPE_BIN)/qeval

# $(call qpipe_files,PATH): the files a model consists of (prerequisites of the
# steps that read it): a directory's files (not its subdirectories), an
# index.json with the shards next to it, or the file itself.
qpipe_files = $(strip $(if $(wildcard $(1)/.),$(filter-out $(patsubst %/,%,$(wildcard $(1)/*/)),$(wildcard $(1)/*)),\
  $(if $(filter %.index.json,$(1)),$(1) $(wildcard $(dir $(1))*.safetensors),$(1))))

# $(call qpipe_need,VALUE,MESSAGE): stop with MESSAGE when VALUE is empty (used
# inside commands, so that only running a recipe without MODEL fails).
qpipe_need = $(if $(1),,$(error $(2)))

# $(call qpipe_in,FILE): the qcal/qeval option for a text or a token file (.u32).
qpipe_in = $(if $(filter %.u32,$(1)),--tokens,--text) $(1)

# Shell single-quoting of a string, and its checksum (POSIX cksum).
qpipe_q   = $(subst ','\'',$(1))
qpipe_sum = $(firstword $(shell printf '%s' '$(call qpipe_q,$(1))' | cksum))

# Option stamps. $(call qpipe_stamp,prefix_,STEP,CMDVAR) is the path
# OUT/.qpipe/STEP.<cksum>.opts where <cksum> is the checksum of the step's
# command (CMDVAR, expanded with the thread options empty: --threads changes
# no output, so it is not an option that rebuilds). A changed option, model
# path, text path or tool directory is a different, missing stamp: the step
# re-runs. The stamp rule ($(call qpipe_stamp_rule,PATH,STEP,CMDVAR,prefix_))
# writes the command into it and deletes the step's other stamps, so going
# back to old options rebuilds too.
qpipe_sig_mode :=
qpipe_threads = $(if $(qpipe_sig_mode),,$(if $(1),--threads $(1)))
qpipe_sig = $(eval qpipe_sig_mode := 1)$(strip $($(1)))$(eval qpipe_sig_mode :=)
qpipe_stamp = $($(1)o)/.qpipe/$(2).$(call qpipe_sum,$(call qpipe_sig,$(3))).opts
define qpipe_stamp_rule
$(1):
	$$($(4)need)@mkdir -p $$(@D) && rm -f $$(@D)/$(2).*.opts && printf '%s\n' '$$(call qpipe_q,$$(call qpipe_sig,$(3)))' > $$@
endef

# $(call qpipe_prov,FILE): print a checkpoint's embedded provenance (safetensors
# __metadata__ or GGUF key "qpipe.provenance"), one tool a line, with python3.
define qpipe_prov_py
import json, os, shlex, struct, sys
def st_meta(p):
    with open(p, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n)).get('__metadata__') or {}
def gguf_kv(p):
    f = open(p, 'rb')
    rd = lambda fmt: struct.unpack(fmt, f.read(struct.calcsize(fmt)))
    sc = {0: '<B', 1: '<b', 2: '<H', 3: '<h', 4: '<I', 5: '<i', 6: '<f', 7: '<?', 10: '<Q', 11: '<q', 12: '<d'}
    def val(t):
        if t == 8:
            return f.read(rd('<Q')[0]).decode('utf-8', 'replace')
        if t == 9:
            et, n = rd('<IQ')
            return [val(et) for _ in range(n)]
        return rd(sc[t])[0]
    if f.read(4) != b'GGUF':
        raise SystemExit(p + ': not a GGUF file')
    ver, nt, nkv = rd('<IQQ')
    kv = {}
    for _ in range(nkv):
        k = f.read(rd('<Q')[0]).decode()
        kv[k] = val(rd('<I')[0])
    return kv
p = sys.argv[1]
if os.path.isdir(p):
    idx = os.path.join(p, 'model.safetensors.index.json')
    p = os.path.join(p, sorted(set(json.load(open(idx))['weight_map'].values()))[0] if os.path.exists(idx) else 'model.safetensors')
prov = (gguf_kv(p) if p.endswith('.gguf') else st_meta(p)).get('qpipe.provenance')
print('## embedded in ' + p + ' (qpipe.provenance)')
for e in json.loads(prov) if prov else []:
    print(e['prog'] + ' ' + e['version'] + ': ' + shlex.join(e['args']))
if not prov:
    print('(none)')
endef

# $(call qpipe_bytes,FILES...): total size in bytes (shell; globs allowed).
qpipe_bytes = $$(stat -L -c %s $(1) | awk '{ s += $$1 } END { print s + 0 }')
# $(call qpipe_weights,FILES...): those of a model's files that hold weights.
qpipe_weights = $(filter %.safetensors %.bin %.gguf %.pt %.pth,$(1))

# ---------------------------------------------------------------------------
# $(call qpipe_begin,PREFIX_,prefix_,NAME,cal): the knobs every recipe has (each
# PREFIX_X defaults to the shared X, so `make -f R.mk MODEL=...` works and a
# Makefile including several recipes can set them apart) and the internal
# names derived from them; with a 4th argument "cal", the calibration step.
define qpipe_begin
$(1)MODEL     ?= $$(MODEL)
$(1)OUT       ?= $$(if $$(OUT),$$(OUT),out/$(3))
$(1)TEXT      ?= $$(TEXT)
$(1)EVAL      ?= $$(EVAL)
$(1)THREADS   ?= $$(THREADS)
$(1)CAL_OPTS  ?= $$(CAL_OPTS)
$(1)EVAL_OPTS ?= $$(EVAL_OPTS)
$(2)o           := $$(patsubst %/,%,$$($(1)OUT))
$(2)model       := $$(patsubst %/,%,$$($(1)MODEL))
$(2)model_files := $$(call qpipe_files,$$($(2)model))
$(2)text        := $$($(1)TEXT)
$(2)eval        := $$($(1)EVAL)
$(2)t            = $$(call qpipe_threads,$$($(1)THREADS))
$(2)cal         := $(if $(4),$$($(2)o)/cal.qs)
$(2)need_text   := $(4)
$(2)need         = $$(call qpipe_need,$$($(2)model),$(3).mk: set MODEL=path (a checkpoint: directory or file))$$(if $$($(2)need_text),$$(call qpipe_need,$$($(2)text),$(3).mk: set TEXT=calib.txt (calibration text or token ids .u32)))
$(2)cmd_cal      = $$(qpipe_qcal) $$($(2)model) $$(call qpipe_in,$$($(2)text)) $$($(1)CAL_OPTS) $$($(2)t) -o $$($(2)cal)
ifneq ($(4),)
$$($(2)cal): $$($(2)model_files) $$($(2)text) $$(qpipe_qcal) $$(call qpipe_stamp,$(2),cal,$(2)cmd_cal)
	$$($(2)need)@mkdir -p $$(@D)
	$$($(2)cmd_cal)
$$(eval $$(call qpipe_stamp_rule,$$(call qpipe_stamp,$(2),cal,$(2)cmd_cal),cal,$(2)cmd_cal,$(2)))
$$($(2)cal): private SHELL := /bin/bash
$$($(2)cal): private .SHELLFLAGS := -o pipefail -c
endif
endef

# $(call qpipe_end,PREFIX_,prefix_,NAME): after the recipe defined its model
# step ($(prefix_done), making $(prefix_output); tools in $(prefix_tools);
# command in $(prefix_cmd_model)): the eval of the model and of the output
# (when EVAL is set), report.txt, provenance.txt, the phony targets NAME and
# NAME-clean, and (run with -f) the goals all and clean.
define qpipe_end
$(2)report  := $$($(2)o)/report.txt
$(2)prov    := $$($(2)o)/provenance.txt
$(2)ev_base := $$(if $$($(2)eval),$$($(2)o)/eval-model.txt)
$(2)ev_out  := $$(if $$($(2)eval),$$($(2)o)/eval-output.txt)
$(2)cmd_ev_base = $$(qpipe_qeval) $$($(2)model) $$(call qpipe_in,$$($(2)eval)) $$($(1)EVAL_OPTS) $$($(2)t)
$(2)cmd_ev_out  = $$(qpipe_qeval) $$($(2)output) $$(call qpipe_in,$$($(2)eval)) $$($(1)EVAL_OPTS) $$($(2)t)
$(2)all_tools := $$(sort $$($(2)tools) $$(if $$($(2)cal),$$(qpipe_qcal)) $$(if $$($(2)eval),$$(qpipe_qeval)))

$$(eval $$(call qpipe_stamp_rule,$$(call qpipe_stamp,$(2),model,$(2)cmd_model),model,$(2)cmd_model,$(2)))
ifneq ($$($(2)eval),)
$$($(2)ev_base): $$($(2)model_files) $$($(2)eval) $$(qpipe_qeval) $$(call qpipe_stamp,$(2),eval-model,$(2)cmd_ev_base)
	$$($(2)need)@mkdir -p $$(@D)
	$$($(2)cmd_ev_base) > $$@.tmp && mv $$@.tmp $$@
$$($(2)ev_out): $$($(2)done) $$($(2)eval) $$(qpipe_qeval) $$(call qpipe_stamp,$(2),eval-output,$(2)cmd_ev_out)
	$$($(2)cmd_ev_out) > $$@.tmp && mv $$@.tmp $$@
$$(eval $$(call qpipe_stamp_rule,$$(call qpipe_stamp,$(2),eval-model,$(2)cmd_ev_base),eval-model,$(2)cmd_ev_base,$(2)))
$$(eval $$(call qpipe_stamp_rule,$$(call qpipe_stamp,$(2),eval-output,$(2)cmd_ev_out),eval-output,$(2)cmd_ev_out,$(2)))
endif

# report.txt: sizes and perplexities; lines starting with "time" are timings
# (the only lines that differ between identical runs).
$$($(2)report): $$($(2)done) $$($(2)ev_base) $$($(2)ev_out)
	@{ echo "# qpipe report: $(3) (pipelines/$(3).mk)"; \
	  echo "model         $$($(2)model)"; \
	  echo "output        $$($(2)output)"; \
	  m=$$(call qpipe_bytes,$$(call qpipe_weights,$$($(2)model_files))); \
	  o=$$(call qpipe_bytes,$$($(2)output_weights)); \
	  echo "bytes model   $$$$m"; \
	  echo "bytes output  $$$$o" | awk -v m=$$$$m '{ printf "%s (%.1f%% of the model)\n", $$$$0, m ? 100 * $$$$3 / m : 0 }'; \
	  if [ -n "$$($(2)eval)" ]; then \
	    b=$$$$(awk '$$$$1 == "ppl" { print $$$$2 }' $$($(2)ev_base)); \
	    q=$$$$(awk '$$$$1 == "ppl" { print $$$$2 }' $$($(2)ev_out)); \
	    echo "eval          $$($(2)eval) $$($(1)EVAL_OPTS)"; \
	    awk '$$$$1 == "tokens" { $$$$1 = ""; print "tokens       " $$$$0 }' $$($(2)ev_base); \
	    echo "ppl model     $$$$b"; \
	    echo "ppl output    $$$$q" | awk -v b=$$$$b '{ printf "%s (%+.2f%%)\n", $$$$0, b ? 100 * ($$$$3 / b - 1) : 0 }'; \
	    awk '$$$$1 == "speed" { $$$$1 = ""; print "time eval model  " $$$$0 }' $$($(2)ev_base); \
	    awk '$$$$1 == "speed" { $$$$1 = ""; print "time eval output " $$$$0 }' $$($(2)ev_out); \
	  else echo "eval          (none: set EVAL=eval.txt or tokens.u32 for perplexities)"; fi; \
	} > $$@.tmp && mv $$@.tmp $$@
	@cat $$@

# provenance.txt: tool versions, every step's command (as make runs it), and
# the provenance embedded in the output by qpack.
$$($(2)prov): private export QPIPE_PROV_PY = $$(qpipe_prov_py)
$$($(2)prov): $$($(2)done) $$($(2)ev_base) $$($(2)ev_out)
	@{ echo "# qpipe provenance: $(3) (pipelines/$(3).mk)"; \
	  echo "## tools"; \
	  for t in $$($(2)all_tools); do echo "$$$$($$$$t --version)  $$$$t"; done; \
	  echo "## steps (the commands make ran, without --threads: no output depends on it)"; \
	  $$(if $$($(2)cal),printf '%s\n' 'cal.qs: $$(call qpipe_q,$$(call qpipe_sig,$(2)cmd_cal))';) \
	  $$(foreach v,$$($(2)extra_cmds),printf '%s\n' '$$(call qpipe_q,$$($$(v)_label)): $$(call qpipe_q,$$(call qpipe_sig,$$(v)))';) \
	  printf '%s\n' '$$(notdir $$($(2)output)): $$(call qpipe_q,$$(call qpipe_sig,$(2)cmd_model))'; \
	  $$(if $$($(2)eval),printf '%s\n' 'eval-model.txt: $$(call qpipe_q,$$(call qpipe_sig,$(2)cmd_ev_base))' 'eval-output.txt: $$(call qpipe_q,$$(call qpipe_sig,$(2)cmd_ev_out))';) \
	  python3 -c "$$$$QPIPE_PROV_PY" $$($(2)output) || echo "(the embedded provenance could not be read: needs python3)"; \
	} > $$@.tmp && mv $$@.tmp $$@

$$($(2)done) $$($(2)ev_base) $$($(2)ev_out) $$($(2)report) $$($(2)prov): private SHELL := /bin/bash
$$($(2)done) $$($(2)ev_base) $$($(2)ev_out) $$($(2)report) $$($(2)prov): private .SHELLFLAGS := -o pipefail -c

.PHONY: $(3) $(3)-clean
$(3): $$($(2)report) $$($(2)prov)
$(3)-clean:
	rm -rf $$($(2)cal) $$($(2)output) $$($(2)clean_extra) $$($(2)ev_base) $$($(2)ev_out) $$($(2)report) $$($(2)prov) $$($(2)o)/.qpipe
	-rmdir $$($(2)o) 2>/dev/null

ifeq ($$($(2)top),1)
.DEFAULT_GOAL := $(3)
.PHONY: all clean
all: $(3)
clean: $(3)-clean
else
.DEFAULT_GOAL := $$($(2)goal)
endif
endef

endif

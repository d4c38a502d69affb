# qpipe — top-level Makefile.
# `make` builds every binary into bin/; `make check` runs unit + CLI tests;
# `make deps` installs missing Debian packages. Quiet unless V=1.
# Layout: common/*.c and formats/*.c form libqpipe.a; filters/<tool>.c is one
# binary each; tests/unit/test_*.c is one unit-test binary each. New files are
# picked up by wildcard, so adding a module never needs a Makefile edit.

Q       = $(if $(filter 1,$(V)),,@)
CC     ?= cc
OPT    ?= -O2
WARN    = -Wall -Wextra -Wshadow -Wformat=2 -Wvla -Wmissing-prototypes -Wstrict-prototypes
CFLAGS  = -std=c11 -D_GNU_SOURCE $(OPT) -g $(WARN) -pthread -Icommon -Iformats $(MOREFLAGS)
LDLIBS  = -larchive -lmsgpackc -lxxhash -ljansson -lpcre2-8 -lutf8proc -llapacke -lopenblas -lm -pthread
BUILD  ?= build
BIN    ?= bin

DEB_PKGS = build-essential clang libarchive-dev libmsgpack-dev libxxhash-dev libjansson-dev \
           libpcre2-dev libutf8proc-dev libopenblas-dev liblapacke-dev bats parallel time zstd \
           libclang-rt-14-dev valgrind zsh bc help2man

LIB_SRC   = $(wildcard common/*.c) $(wildcard formats/*.c)
LIB_OBJ   = $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC))
TOOLS     = $(patsubst filters/%.c,%,$(wildcard filters/*.c))
TOOL_BIN  = $(addprefix $(BIN)/,$(TOOLS))
UNIT_SRC  = $(wildcard tests/unit/test_*.c)
FUZZ_SRC  = $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES = $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRC))
# make fuzz FUZZ_TARGETS="gguf stats" runs only those targets
FUZZ_TARGETS ?= $(FUZZ_NAMES)
# Each fuzz target also builds as a plain replay program (tests/fuzz/replay.c)
# that runs its seed and regression corpora: part of the unit tests.
UNIT_BIN  = $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC)) \
            $(patsubst %,$(BUILD)/tests/test_fuzz_%,$(FUZZ_NAMES))
FUZZ_SECONDS ?= 60
HELPER_SRC = $(wildcard tests/tools/*.c)
HELPER_BIN = $(patsubst tests/tools/%.c,$(BIN)/%,$(HELPER_SRC))

.PHONY: all deps check check-unit check-cli check-asan check-valgrind demo bench clean install man fuzz
all: $(TOOL_BIN) $(HELPER_BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC  $<")
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libqpipe.a: $(LIB_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN)/%: $(BUILD)/filters/%.o $(BUILD)/libqpipe.a
	@mkdir -p $(BIN)
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BIN)/%: $(BUILD)/tests/tools/%.o $(BUILD)/libqpipe.a
	@mkdir -p $(BIN)
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libqpipe.a
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/test_fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/replay.o $(BUILD)/libqpipe.a
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

# libFuzzer builds (clang): build-fuzz/fuzz_<name>
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(LIB_SRC)
	@mkdir -p build-fuzz
	$(Q)clang -std=c11 -D_GNU_SOURCE -O1 -g -pthread -Icommon -Iformats -fsanitize=fuzzer,address,undefined \
	  $< $(LIB_SRC) -o $@ $(LDLIBS)

fuzz: deps
	$(Q)for n in $(FUZZ_TARGETS); do $(MAKE) --no-print-directory build-fuzz/fuzz_$$n || exit 1; \
	  mkdir -p build-fuzz/corpus-$$n; \
	  echo "fuzz_$$n: $(FUZZ_SECONDS) s"; \
	  build-fuzz/fuzz_$$n -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	    $$( [ -f tests/fuzz/$$n.dict ] && echo -dict=tests/fuzz/$$n.dict ) \
	    -artifact_prefix=tests/fuzz/regress/$$n/ build-fuzz/corpus-$$n tests/fuzz/corpus/$$n || exit 1; \
	done

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	else echo "deps: all present"; fi

# check: unit tests (normal and ASan+UBSan builds) then bats CLI tests; the
# last line is the summary `N passed, N failed` (tests/run-all).
check: deps
	$(Q)$(MAKE) --no-print-directory all $(UNIT_BIN)
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan BIN=build-asan/bin CC=clang OPT=-O1 \
	  MOREFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  all $(patsubst $(BUILD)/%,build-asan/%,$(UNIT_BIN))
	$(Q)tests/run-all $(BUILD)/tests build-asan/tests

check-asan: deps
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan BIN=build-asan/bin CC=clang OPT=-O1 \
	  MOREFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  all $(patsubst $(BUILD)/%,build-asan/%,$(UNIT_BIN))

# check-valgrind: the bats CLI suites with every tool under valgrind memcheck
# (VALGRIND=1, tests/cli/helpers.bash); any report fails. Long (about an hour
# on 2 cores), so not part of check; tests that are whole-eval.txt figures skip.
check-valgrind: deps all
	$(Q)rm -rf $${TMPDIR:-/tmp}/qpipe-valgrind-logs $${TMPDIR:-/tmp}/qpipe-valgrind-logs.bin
	$(Q)VALGRIND=1 tests/run-all

demo: deps all
	$(Q)tests/demo.sh

bench: all
	$(Q)tests/bench/run-all

PREFIX ?= /usr/local
# man pages are generated from each tool's --help and --version (help2man)
man: all
	@mkdir -p $(BUILD)/man
	$(Q)for t in $(TOOLS); do help2man -N -n "qpipe $$t" --version-string=$$($(BIN)/$$t --version | awk '{print $$3}') \
	  $(BIN)/$$t > $(BUILD)/man/$$t.1 || exit 1; done

install: all man
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions
	install -m 755 $(TOOL_BIN) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	for t in $(TOOLS); do install -m 644 completions/qpipe.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$t; done
	install -m 644 completions/_qpipe $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_qpipe

clean:
	rm -rf build build-asan bin build-fuzz

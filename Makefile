# ngx_http_billing_module
#
#   make                    build build/ngx_http_billing_module.so
#   make NGINX_SRC=DIR      ... against another nginx source tree
#   make test               build and run the whole suite (prove)
#   make test-asan          the suite against an AddressSanitizer build
#   make test-static        API, webhook, gate, meter and cancellation
#                           tests against an nginx built with the
#                           module in (--add-module)
#   make fuzz               every fuzz target for FUZZ_TIME seconds
#   make fuzz-replay        every fuzz target once over its corpus
#   make run                quickstart: private Redis + nginx, foreground
#   make bench              wrk benchmarks, see bench/README.md
#   make deb                build/libnginx-mod-http-billing_VERSION_ARCH.deb
#                           (debhelper, checked by lintian)
#   make deb DEB_REBUILD=N  ... versioned VERSION+bN, for a new nginx ABI
#   make install            the module, its load_module snippet and the
#                           docs under $(DESTDIR)$(PREFIX) (/usr/local)
#   make uninstall          removes what make install put there

NGINX_SRC ?= /usr/share/nginx/src
FUZZ_TIME ?= 60
PROVE_FLAGS ?=

# make install
PREFIX ?= /usr/local
DESTDIR ?=
MODULEDIR ?= $(PREFIX)/lib/nginx/modules
CONFDIR ?= $(PREFIX)/share/nginx/modules-available
DOCDIR ?= $(PREFIX)/share/doc/ngx_http_billing_module

# make deb: a number makes a rebuild, VERSION+bN
DEB_REBUILD ?=

SHELL := /bin/bash
BUILD := build
SRC_ID := $(shell printf '%s' '$(abspath $(NGINX_SRC))' | md5sum | cut -c1-8)
NGX := $(BUILD)/nginx-$(SRC_ID)
MODULE := $(BUILD)/ngx_http_billing_module.so
ASAN_MODULE := $(BUILD)/asan/ngx_http_billing_module.so

HARDEN := -g -O2 -fstack-protector-strong -Wformat -Werror=format-security \
          -D_FORTIFY_SOURCE=2
CC_OPT := $(HARDEN) -Wall -Wextra -Werror
ASAN_OPT := -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
            -fno-sanitize-recover=undefined -Wall -Wextra -Werror
LD_OPT := -Wl,-z,relro -Wl,-z,now
ASAN_LD_OPT := $(LD_OPT) -fsanitize=address,undefined

MODULE_SRCS := config $(wildcard src/*.c src/*.h)

# the parts that need no nginx, with their unit tests
PLAIN_SRCS := src/ngx_billing_signature.c src/ngx_billing_event.c \
              src/ngx_billing_event_scan.c \
              src/ngx_billing_state.c src/ngx_billing_money.c \
              src/ngx_billing_form.c src/ngx_billing_plan.c
UNIT_TESTS := signature event state money form plan
UNIT_BINS := $(UNIT_TESTS:%=$(BUILD)/unit/test_%)
UNIT_CFLAGS := -g -O1 -Wall -Wextra -Werror -std=c99 -D_POSIX_C_SOURCE=200809L \
               -Isrc -It/unit
UNIT_LIBS := -ljansson -lcrypto

# Static build: upstream source of Debian's nginx version, configured
# with Debian's flags less its dynamic modules (libraries we may lack),
# and with paths relative to the prefix the harness gives with -p.
# Compiled with Debian's flags only: -Wextra -Werror would fail some of
# configure's feature tests (pwrite, crypt, ...) and so change nginx
# itself; nginx adds -W -Wall -Werror to every file anyway.
DEBIAN_CONF_FLAGS := /usr/share/nginx/src/conf_flags
STATIC_NEED := --with-http_ssl_module --with-compat --with-pcre-jit
STATIC_PATHS := --conf-path=nginx.conf --error-log-path=stderr \
    --pid-path=nginx.pid --lock-path=nginx.lock \
    --http-log-path=access.log --modules-path=modules \
    --http-client-body-temp-path=client_body_temp \
    --http-proxy-temp-path=proxy_temp --http-fastcgi-temp-path=fastcgi_temp \
    --http-uwsgi-temp-path=uwsgi_temp --http-scgi-temp-path=scgi_temp
STATIC_TESTS := $(wildcard t/1*.t t/2*.t t/3*.t) t/60-meter.t t/71-cancel.t \
                t/73-billing-e2e.t
# set by test-static for its second make: the tree .ci/nginx-source made
STATIC_SRC :=
STATIC := $(BUILD)/static-$(notdir $(STATIC_SRC))

# The version lives in one place: NGX_HTTP_BILLING_VERSION in the
# module's header. The package, its file name and its changelog take it
# from there.
VERSION := $(shell awk '$$2 == "NGX_HTTP_BILLING_VERSION" \
             { gsub(/"/, "", $$3); print $$3 }' src/ngx_http_billing_module.h)
DEB_PACKAGE := libnginx-mod-http-billing
DEB_VERSION := $(VERSION)$(if $(DEB_REBUILD),+b$(DEB_REBUILD))
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo unknown)
DEB_NAME := $(DEB_PACKAGE)_$(DEB_VERSION)_$(DEB_ARCH)
DEB := $(BUILD)/$(DEB_NAME).deb
# the copy dpkg-buildpackage works in, one per Debian version; its
# results (.deb, -dbgsym, .changes, .buildinfo, build.log) land beside it
DEB_STAGE := $(BUILD)/deb/$(DEB_VERSION)
DEB_TREE := $(DEB_STAGE)/$(DEB_PACKAGE)-$(VERSION)
DEB_INPUTS := $(MODULE_SRCS) README.md $(wildcard conf-examples/*) \
    $(shell find debian -type f 2>/dev/null) tools/deb-changelog Makefile \
    $(wildcard /usr/share/nginx/src/conf_flags \
               /usr/share/nginx/src/debian/libnginx-mod.abisubstvars)

FUZZ_TARGETS := signature event plan
FUZZ_BINS := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined \
               -fno-sanitize-recover=undefined -Isrc

.PHONY: all deps unit test test-asan test-static static-prove fuzz \
        fuzz-replay run bench deb install uninstall clean FORCE

all: $(MODULE)

deps:
	@.ci/deps build

# Configure flags: Debian's nginx-dev ships the ones its nginx was built
# with; any other tree gets --with-compat, which is all a dynamic module
# needs to load into a binary of the same version.
$(NGX)/.copied:
	@.ci/deps build
	@test -x $(NGINX_SRC)/configure || \
	    { echo "no nginx source tree at $(NGINX_SRC)" >&2; exit 1; }
	rm -rf $(NGX) && mkdir -p $(BUILD)
	cp -a $(NGINX_SRC) $(NGX)
	touch $@

configure = cd $(NGX) && \
	if [ -f conf_flags ]; then . ./conf_flags; \
	else NGX_CONF_FLAGS=(--with-compat); fi; \
	./configure "$${NGX_CONF_FLAGS[@]}" --builddir=$(1) \
	    --with-cc-opt='$(2)' --with-ld-opt='$(3)' \
	    --add-dynamic-module=$(CURDIR) > $(1).log 2>&1 \
	    || { tail -20 $(1).log; exit 1; }

$(NGX)/objs/Makefile: $(NGX)/.copied config
	$(call configure,objs,$(CC_OPT),$(LD_OPT))

$(NGX)/objs-asan/Makefile: $(NGX)/.copied config
	$(call configure,objs-asan,$(ASAN_OPT),$(ASAN_LD_OPT))

$(NGX)/objs/ngx_http_billing_module.so: $(NGX)/objs/Makefile $(MODULE_SRCS)
	$(MAKE) -C $(NGX) -f objs/Makefile modules

$(NGX)/objs-asan/ngx_http_billing_module.so: $(NGX)/objs-asan/Makefile \
                                             $(MODULE_SRCS)
	$(MAKE) -C $(NGX) -f objs-asan/Makefile modules

# always checked: build/ holds the module of the tree asked for last;
# renamed into place, never rewritten, as a running nginx has it mapped
$(MODULE): $(NGX)/objs/ngx_http_billing_module.so FORCE
	@cmp -s $< $@ || { cp $< $@.tmp && mv -f $@.tmp $@ && echo "built $@"; }

$(ASAN_MODULE): $(NGX)/objs-asan/ngx_http_billing_module.so FORCE
	@mkdir -p $(dir $@)
	@cmp -s $< $@ || { cp $< $@.tmp && mv -f $@.tmp $@ && echo "built $@"; }

$(BUILD)/unit/test_%: t/unit/test_%.c t/unit/tap.h $(PLAIN_SRCS) src/*.h
	@mkdir -p $(dir $@)
	$(CC) $(UNIT_CFLAGS) -o $@ $< $(PLAIN_SRCS) $(UNIT_LIBS)

unit: $(UNIT_BINS)

test: $(MODULE) $(UNIT_BINS)
	@.ci/deps test
	BILLING_MODULE=$(CURDIR)/$(MODULE) BILLING_BUILD=$(CURDIR)/$(BUILD) \
	    prove -I t/lib $(PROVE_FLAGS) t/*.t

test-asan: $(ASAN_MODULE) $(UNIT_BINS)
	@.ci/deps asan
	BILLING_MODULE=$(CURDIR)/$(ASAN_MODULE) BILLING_BUILD=$(CURDIR)/$(BUILD) \
	    BILLING_ASAN=1 prove -I t/lib $(PROVE_FLAGS) t/*.t

# No source tree (no network, no apt: .ci/nginx-source exits 77) is a
# skip, except in CI, which must test the static build.
test-static:
	@.ci/deps test
	@rc=0; src=$$(.ci/nginx-source) || rc=$$?; \
	if [ $$rc -eq 77 ]; then \
	    if [ "$${CI:-}" = true ]; then \
	        echo "test-static: FAILED: no nginx source tree, and CI" \
	             "must test the static build" >&2; exit 1; \
	    fi; \
	    echo "test-static: SKIPPED: no nginx source tree to build from"; \
	    exit 0; \
	fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	$(MAKE) --no-print-directory STATIC_SRC="$$src" static-prove

ifneq ($(STATIC_SRC),)

# configured anew when this Makefile changes too: the flags are here
$(STATIC)/Makefile: config Makefile $(STATIC_SRC)/.unpacked
	@mkdir -p $(STATIC)
	@. $(DEBIAN_CONF_FLAGS) 2>/dev/null || NGX_CONF_FLAGS=(); flags=(); \
	for f in "$${NGX_CONF_FLAGS[@]}" $(STATIC_NEED); do \
	    case $$f in --add-dynamic-module=*|*=dynamic|--prefix=*|--*-path=*) ;; \
	    *) [[ " $${flags[*]} " == *" $$f "* ]] || flags+=("$$f") ;; esac; \
	done; \
	echo "configure (static):" "$${flags[@]}"; \
	cd $(STATIC_SRC) && ./configure "$${flags[@]}" $(STATIC_PATHS) \
	    --builddir=$(CURDIR)/$(STATIC) \
	    --with-cc-opt='$(HARDEN)' --with-ld-opt='$(LD_OPT)' \
	    --add-module=$(CURDIR) > $(CURDIR)/$(STATIC).log 2>&1 \
	    || { tail -20 $(CURDIR)/$(STATIC).log; exit 1; }

# the whole of nginx: two jobs, the cores the machines have
$(STATIC)/nginx: $(STATIC)/Makefile $(MODULE_SRCS)
	$(MAKE) -j2 -C $(STATIC_SRC) -f $(CURDIR)/$(STATIC)/Makefile binary

static-prove: $(STATIC)/nginx
	BILLING_NGINX=$(CURDIR)/$(STATIC)/nginx BILLING_STATIC=1 \
	    BILLING_BUILD=$(CURDIR)/$(BUILD) \
	    prove -I t/lib $(PROVE_FLAGS) $(STATIC_TESTS)

else

static-prove:
	@echo "static-prove: needs STATIC_SRC; run make test-static" >&2; exit 1

endif

$(BUILD)/fuzz/fuzz_%: fuzz/fuzz_%.c $(PLAIN_SRCS) src/*.h
	@.ci/deps fuzz
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ $< $(PLAIN_SRCS) $(UNIT_LIBS)

fuzz: $(FUZZ_BINS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(BUILD)/fuzz/corpus-$$t; \
	    cp fuzz/corpus/$$t/* $(BUILD)/fuzz/corpus-$$t/ 2>/dev/null || :; \
	    echo "fuzz: $$t for $(FUZZ_TIME)s"; \
	    $(BUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_TIME) \
	        -artifact_prefix=$(BUILD)/fuzz/$$t- \
	        -print_final_stats=1 $(BUILD)/fuzz/corpus-$$t \
	        > $(BUILD)/fuzz/$$t.log 2>&1 \
	        || { tail -40 $(BUILD)/fuzz/$$t.log; exit 1; }; \
	    grep -E '^stat::number_of_executed_units' $(BUILD)/fuzz/$$t.log; \
	done

# each target once over its committed corpus: the inputs listed one by
# one (files, not a directory), as libFuzzer then runs each once and
# neither mutates nor writes anything
fuzz-replay: $(FUZZ_BINS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	    mapfile -t files < <(find fuzz/corpus/$$t -maxdepth 1 -type f | sort); \
	    [ $${#files[@]} -gt 0 ] || \
	        { echo "fuzz-replay: no corpus for $$t" >&2; exit 1; }; \
	    $(BUILD)/fuzz/fuzz_$$t -runs=1 "$${files[@]}" \
	        > $(BUILD)/fuzz/$$t-replay.log 2>&1 \
	        || { tail -40 $(BUILD)/fuzz/$$t-replay.log; exit 1; }; \
	    echo "fuzz-replay: $$t: $${#files[@]} inputs"; \
	done

run: $(MODULE)
	@.ci/deps run
	tools/quickstart $(CURDIR)/$(MODULE)

bench: $(MODULE)
	@.ci/deps bench
	bench/run $(CURDIR)/$(MODULE)

# Built as Debian builds its own nginx module packages (debian/rules),
# against Debian's nginx-dev whatever NGINX_SRC says, in a copy of the
# tree under build/ (the tree itself stays clean); lintian must find no
# error. Rebuilt when the nginx-dev it was built against changes.
deb: $(DEB)

$(DEB): $(DEB_INPUTS)
	@.ci/deps deb
	@[ -n "$(VERSION)" ] || { echo "deb: no NGX_HTTP_BILLING_VERSION in" \
	    "src/ngx_http_billing_module.h" >&2; exit 1; }
	rm -rf $(DEB_STAGE) && mkdir -p $(DEB_TREE)
	cp -a config src README.md conf-examples debian $(DEB_TREE)/
	rm -f $(DEB_TREE)/debian/changelog.in
	tools/deb-changelog $(VERSION) $(DEB_REBUILD) > $(DEB_TREE)/debian/changelog
	@echo "dpkg-buildpackage -b -us -uc: log in $(DEB_STAGE)/build.log"
	@cd $(DEB_TREE) && dpkg-buildpackage -b -us -uc > ../build.log 2>&1 \
	    || { tail -40 ../build.log; exit 1; }
	lintian --fail-on error $(DEB_STAGE)/$(DEB_NAME).changes
	cp $(DEB_STAGE)/$(DEB_NAME).deb $@.tmp && mv -f $@.tmp $@
	@echo "built $@"

# For those who do not install packages: $(MODULEDIR) as nginx finds it
# with "include $(CONFDIR)/mod-http-billing.conf;" (the snippet names
# the module by its final path, without DESTDIR).
install: $(MODULE)
	install -d $(DESTDIR)$(MODULEDIR) $(DESTDIR)$(CONFDIR) \
	    $(DESTDIR)$(DOCDIR)/conf-examples
	install -m 0644 $(MODULE) $(DESTDIR)$(MODULEDIR)/ngx_http_billing_module.so
	printf 'load_module %s;\n' '$(MODULEDIR)/ngx_http_billing_module.so' \
	    > $(DESTDIR)$(CONFDIR)/mod-http-billing.conf
	chmod 0644 $(DESTDIR)$(CONFDIR)/mod-http-billing.conf
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -m 0644 conf-examples/*.conf $(DESTDIR)$(DOCDIR)/conf-examples/

uninstall:
	rm -f $(DESTDIR)$(MODULEDIR)/ngx_http_billing_module.so \
	    $(DESTDIR)$(CONFDIR)/mod-http-billing.conf \
	    $(DESTDIR)$(DOCDIR)/README.md \
	    $(addprefix $(DESTDIR)$(DOCDIR)/,$(wildcard conf-examples/*.conf))
	rmdir $(DESTDIR)$(DOCDIR)/conf-examples $(DESTDIR)$(DOCDIR) 2>/dev/null || :

clean:
	rm -rf $(BUILD)

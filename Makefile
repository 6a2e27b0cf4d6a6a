# The README's two commands: `make demo` brings the platform up, `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: install demo demo-down status test check lint deploy-check

install:
	deploy/testbed/install.sh

demo: install
	$(VENV)/slb dev up

demo-down:
	$(VENV)/slb dev down

status:
	$(VENV)/slb dev status

lint: deploy-check
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/lint-imports

check: lint
	$(VENV)/pytest

test: install
	$(MAKE) check

# deploy/ and the Vagrant lab: every shell script (shellcheck), the Vagrantfile (Ruby
# syntax, then Vagrant's validation of all but the provider blocks: no VirtualBox or
# libvirt here; rsync shares the folder, as this machine has no NFS server, and Vagrant's
# state goes to a temporary directory, not the repository or $HOME), the systemd units
# (all but their binaries, which live on the nodes), keepalived's part, and the LB node's
# settings example against the real settings.
deploy-check:
	shellcheck -x $$(find deploy -name '*.sh' | sort) .ci/run
	ruby -c Vagrantfile >/dev/null
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  out=$$(OPENSLB_LAB_SYNC=rsync VAGRANT_DOTFILE_PATH="$$tmp/dot" VAGRANT_HOME="$$tmp/home" \
	        vagrant validate --ignore-provider 2>&1) || { echo "$$out"; exit 1; }
	out=$$(systemd-analyze verify --man=no deploy/lb-node/*.service deploy/lab/ctl/*.service 2>&1 \
	      | grep -v 'is not executable'); [ -z "$$out" ] || { echo "$$out"; exit 1; }
	out=$$(keepalived -t -f deploy/lb-node/keepalived.conf 2>&1) || { echo "$$out"; exit 1; }
	OPENSLB_CONFIG=deploy/lb-node/openslb.toml.example $(VENV)/slb config show >/dev/null

# edgefleet: the two commands most people need are `make lab` and `make test`.
.PHONY: help test sanity test-slow test-arm64 test-soak lab lab-down lab-rollout clean

help:
	@echo "make lab         create the lab site controller (local container) and run site.yml against it"
	@echo "make lab-down    remove the lab controller container (generated lab secrets are kept)"
	@echo "make lab-rollout on the running lab: push a config change, then roll a new app bundle out in waves"
	@echo "make test        the whole suite: lint, pytest, every Molecule scenario"
	@echo "make sanity      ansible-test sanity on the edgefleet.site collection (part of make test)"
	@echo "make test-slow   the minutes-long load and outage tests that make test leaves out (slow)"
	@echo "make test-arm64  converge the mosquitto scenario on an arm64 container under qemu (slow)"
	@echo "make test-soak   the integration tests 20 times in a row with one core kept busy (slow)"

test:
	bash tools/test.sh

sanity:
	bash tools/sanity.sh

test-slow:
	bash tools/test.sh --slow

test-arm64:
	bash tools/test.sh --arm64

test-soak:
	bash tools/soak.sh 20 --busy

lab:
	bash tools/lab.sh up

lab-down:
	bash tools/lab.sh down

lab-rollout:
	bash tools/lab.sh rollout

clean:
	rm -rf .venv .pytest_cache

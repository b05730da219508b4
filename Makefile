# liveavatar_rt developer and CI targets. Everything is installed into .venv from the
# package registries (torch 2.13.0 is a CPU wheel on local disk; asking pip for plain `torch`
# or a range would pull a multi-GB CUDA build, so it is always pinned and installed first,
# and the project is built without build isolation).
#
#   make sysdeps     the Debian packages the tests need (espeak-ng, chromium; liveavatar_rt/system_deps.py):
#                    installed with apt-get when missing, or a clear stop naming them without root
#   make venv        .venv with torch==2.13.0, the runtime + test deps, editable liveavatar_rt
#   make build       the C++ extension liveavatar_rt/_C*.so, in place (ninja, incremental)
#   make face-env    .venv-face: mediapipe==0.10.21 (MediaPipe FaceMesh, the eval's landmark measures) in its
#                    own venv, since it needs numpy<2 / protobuf<5 and .venv has numpy 2 (eval/landmarks.py)
#   make test        sysdeps, venv, build, face-env, then pytest (TRITON_INTERPRET=1), then nvcc-check and ctest
#   make ctest       CMake build of csrc/cpu + the C++ kernel test, run by CTest
#   make nvcc-check  syntax-check the torch-free CUDA kernel with plain nvcc (skips without nvcc)
#   make demo        a short MP4 from the example portrait + speech with the tiny model
#   make bench       pytest-benchmark microbenchmarks
#   make clean       build outputs (keeps .venv); `make distclean` also removes .venv and .venv-face
#
# Targets are idempotent: stamp files (in .venv, .venv-face) and the built .so make repeated runs fast.

SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
VENV_STAMP := $(VENV)/.liveavatar_rt-venv

TORCH_VERSION := 2.13.0
TRITON_VERSION := 3.7.1
# Installed after torch, so none of them can pull another torch.
DEPS := "setuptools>=70.1" wheel "numpy>=1.26" "safetensors>=0.4" "tqdm>=4.66" "av>=12" "pillow>=10" \
	"ninja>=1.11" "pytest>=8" "pytest-benchmark>=4" "triton==$(TRITON_VERSION)" \
	"transformers==5.23.0" "sentencepiece==0.2.3" "matplotlib==3.11.2" \
	"fastapi==0.163.2" "starlette==1.10.0" "uvicorn==0.54.0" "websockets==17.4" "prometheus-client==0.26.0" \
	"playwright==1.65.2" "scikit-image==0.26.0"

# The face landmark environment: pinned, numpy and protobuf too (mediapipe 0.10.21 requires numpy<2,
# protobuf>=4.25.3,<5; these are what pip picks for it today, pinned so a rebuild gets the same).
# Its other deps (jax, opencv-contrib-python, matplotlib, ...) come from mediapipe's own metadata.
# eval finds it at .venv-face/bin/python; for another FACE_VENV set LIVEAVATAR_RT_FACE_PYTHON.
FACE_VENV ?= .venv-face
FACE_PY := $(FACE_VENV)/bin/python
FACE_STAMP := $(FACE_VENV)/.liveavatar_rt-face-env
FACE_DEPS := "mediapipe==0.10.21" "numpy==1.26.4" "protobuf==4.25.9"

# Persistent caches inside the checkout (cold C++ builds take ~30-60 s on 2 cores); no ccache.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/build/torch_extensions
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/build/inductor_cache
export MAX_JOBS ?= 2
export CCACHE_DISABLE ?= 1

EXT_SUFFIX := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))" 2>/dev/null)
EXT := liveavatar_rt/_C$(EXT_SUFFIX)
EXT_SOURCES := $(shell find csrc -path csrc/tests -prune -o \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' \) -print 2>/dev/null)

CMAKE_BUILD_DIR := build/cmake
NVCC ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })

.PHONY: sysdeps venv face-env build test ctest nvcc-check demo bench train-tiny clean distclean

# System packages (one list, in liveavatar_rt/system_deps.py), checked on every run (cheap),
# installed only when missing. The system Python runs it: no venv is needed yet.
sysdeps:
	$(PYTHON) liveavatar_rt/system_deps.py install espeak-ng chromium

venv: $(VENV_STAMP)

# The editable install registers the package, its deps and the liveavatar-rt script; the
# extension is built by `make build`, in place, where the editable install finds it.
$(VENV_STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check "torch==$(TORCH_VERSION)"
	$(PIP) install --disable-pip-version-check $(DEPS)
	LIVEAVATAR_RT_NO_EXT=1 $(PIP) install --disable-pip-version-check --no-build-isolation -e .
	touch $@

# The model ships inside the mediapipe wheel (nothing is downloaded at run time); the last line
# loads it once through the worker the eval runs (liveavatar_rt/eval/face_worker.py --check).
face-env: $(FACE_STAMP)

$(FACE_STAMP): Makefile
	test -x $(FACE_PY) || $(PYTHON) -m venv $(FACE_VENV)
	$(FACE_PY) -m pip install --disable-pip-version-check $(FACE_DEPS)
	$(FACE_PY) -I liveavatar_rt/eval/face_worker.py --check
	touch $@

build: $(EXT)

$(EXT): $(VENV_STAMP) setup.py $(EXT_SOURCES)
	$(PY) setup.py build_ext --inplace
	touch $@

# The browser test must run here (Chromium was just installed): a missing browser fails it.
test: sysdeps venv build face-env
	LIVEAVATAR_RT_REQUIRE_BROWSER=1 TRITON_INTERPRET=1 $(PY) -m pytest tests -q -x
	$(MAKE) --no-print-directory nvcc-check
	$(MAKE) --no-print-directory ctest

ctest: venv
	cmake -S . -B $(CMAKE_BUILD_DIR) -DPython3_EXECUTABLE=$(CURDIR)/$(PY) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CMAKE_BUILD_DIR) --parallel $(MAX_JOBS)
	cd $(CMAKE_BUILD_DIR) && ctest --output-on-failure

nvcc-check:
	@if [ -z "$(NVCC)" ]; then \
		echo "nvcc-check: nvcc not found, skipping"; \
	else \
		echo "$(NVCC) -c -o /tmp/x.o csrc/cuda/modulate_kernel.cu"; \
		"$(NVCC)" -c -o /tmp/x.o csrc/cuda/modulate_kernel.cu && echo "nvcc-check: ok"; \
	fi

demo: venv build
	mkdir -p out
	$(VENV)/bin/liveavatar-rt generate --model tiny --image assets/example/portrait.png \
		--audio assets/example/speech.wav --out out/demo.mp4

# The bundled tiny model, end to end (recipes/tiny/README.md): data, VAE, teacher, ODE
# trajectories, causal student, self-forcing DMD, export. Each stage resumes where it stopped.
RUN ?= runs/tiny
train-tiny: venv
	$(PYTHON) liveavatar_rt/system_deps.py install espeak-ng
	nice -n 10 $(PY) -m recipes.tiny.generate --out data/tiny --clips 3000 --seconds 4 --size 128 --workers 2 --seed 0
	$(PY) -m recipes.tiny.train.vae --data data/tiny --run $(RUN)
	$(PY) -m recipes.tiny.train.prep --data data/tiny --run $(RUN)
	$(PY) -m recipes.tiny.train.teacher --run $(RUN)
	$(PY) -m recipes.tiny.train.decoder --data data/tiny --run $(RUN)
	$(PY) -m recipes.tiny.train.ode --run $(RUN)
	$(PY) -m recipes.tiny.train.student --run $(RUN)
	$(PY) -m recipes.tiny.train.dmd --run $(RUN)
	$(PY) -m recipes.tiny.train.export --run $(RUN)

bench: venv build
	$(PY) -m pytest bench --benchmark-only

clean:
	rm -rf build liveavatar_rt/_C*.so .pytest_cache .benchmarks

distclean: clean
	rm -rf $(VENV) $(FACE_VENV) *.egg-info

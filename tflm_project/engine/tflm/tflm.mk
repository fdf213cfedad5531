# ENGINE=tflm: TensorFlow Lite Micro from a tree made by its create_tflm_tree.py (TFLM_DIR).
# The library is compiled once per core and tree into TFLM_LIB_DIR (a cache the host tool
# picks), with TFLM's own flags: -Os for the core, -O2 for kernels and CMSIS-NN, as its
# Makefile does. Only the model's sources and main are compiled per model.
ifeq ($(wildcard $(TFLM_DIR)/tensorflow/lite/micro/micro_interpreter.h),)
$(error ENGINE=tflm needs TFLM_DIR, a TFLM tree (no tensorflow/lite/micro/micro_interpreter.h in '$(TFLM_DIR)'): run make tflm on a machine with network, or give TFLM_DIR=PATH to a tree made by create_tflm_tree.py)
endif
TFLM_LIB_DIR ?= $(BUILD)/tflm-lib
TFLM_LIB := $(TFLM_LIB_DIR)/libtflm.a
TFLM_CMSIS_NN := $(if $(wildcard $(TFLM_DIR)/tensorflow/lite/micro/kernels/cmsis_nn),1)
TFLM_INCLUDES := -I$(TFLM_DIR) -I$(TFLM_DIR)/third_party/flatbuffers/include \
	-I$(TFLM_DIR)/third_party/gemmlowp -I$(TFLM_DIR)/third_party/ruy \
	$(if $(TFLM_CMSIS_NN),-I$(TFLM_DIR)/third_party/cmsis_nn -I$(TFLM_DIR)/third_party/cmsis_nn/Include \
	-I$(TFLM_DIR)/third_party/cmsis/CMSIS/Core/Include)
TFLM_DEFINES := -DTF_LITE_STATIC_MEMORY -DTF_LITE_DISABLE_X86_NEON -DTF_LITE_MCU_DEBUG_LOG \
	$(if $(TFLM_CMSIS_NN),-DCMSIS_NN -DARM_NN_ENABLE_F16=0 -DARM_NN_ENABLE_F32=0 -DKERNELS_OPTIMIZED_FOR_SPEED)
TFLM_COMMON := -mcpu=$(CORE) -mthumb -ffunction-sections -fdata-sections -fmessage-length=0 \
	-funsigned-char -fomit-frame-pointer -fno-unwind-tables -fno-asynchronous-unwind-tables \
	$(TFLM_DEFINES) $(TFLM_INCLUDES)
TFLM_CXXFLAGS := $(TFLM_COMMON) -std=c++17 -fno-rtti -fno-exceptions -fno-threadsafe-statics
TFLM_CFLAGS := $(TFLM_COMMON) -std=c17
# our platform file replaces cortex_m_generic's log and timer; kissfft serves only the signal library
TFLM_LIB_SRCS := $(shell cd $(TFLM_DIR) && find tensorflow third_party \( -name '*.cc' -o -name '*.c' \) \
	| grep -v -e cortex_m_generic/ -e kissfft | sort)
TFLM_LIB_OBJS := $(addprefix $(TFLM_LIB_DIR)/obj/,$(addsuffix .o,$(TFLM_LIB_SRCS)))
tflm_opt = $(if $(findstring tensorflow/lite/micro/kernels/,$(1))$(findstring third_party/cmsis_nn/,$(1)),-O2,-Os)

$(TFLM_LIB_DIR)/obj/%.cc.o: $(TFLM_DIR)/%.cc
	@mkdir -p $(dir $@)
	arm-none-eabi-g++ $(TFLM_CXXFLAGS) $(call tflm_opt,$<) -c $< -o $@

$(TFLM_LIB_DIR)/obj/%.c.o: $(TFLM_DIR)/%.c
	@mkdir -p $(dir $@)
	arm-none-eabi-gcc $(TFLM_CFLAGS) $(call tflm_opt,$<) -c $< -o $@

$(TFLM_LIB): $(TFLM_LIB_OBJS)
	rm -f $@.tmp && arm-none-eabi-ar rcs $@.tmp $^ && mv $@.tmp $@

.PHONY: tflm-lib
tflm-lib: $(TFLM_LIB)

ENGINE_SRCS := engine/tflm/engine_tflm.cc engine/tflm/tflm_platform.cc $(GEN_DIR)/model_data.c
ENGINE_INCLUDES := -Iengine/tflm -I$(GEN_DIR)
ENGINE_CXXFLAGS := $(TFLM_CXXFLAGS) -Os -DTFLM_ARENA_BYTES=$(TFLM_ARENA_BYTES) -DBOARD_TIMER_HZ=$(TIMER_HZ) \
	-DTFLM_PROBE_STACK_BYTES=$(MIN_STACK_BYTES)
ENGINE_LIBS := $(TFLM_LIB)
LINK := arm-none-eabi-g++

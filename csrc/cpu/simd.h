#pragma once
// Runtime CPU dispatch without -march flags: GCC compiles each hot loop for AVX-512 (x86-64-v4), AVX2+FMA
// (x86-64-v3) and the baseline, and picks the best clone once at load time. Helpers called from a clone are
// force-inlined so they are compiled for the clone's instruction set too.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTMSFD_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FASTMSFD_INLINE inline __attribute__((always_inline))
#else
#define FASTMSFD_CPU_CLONES
#define FASTMSFD_INLINE inline
#endif

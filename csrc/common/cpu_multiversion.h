// Function multiversioning for the hot CPU loops: the compiler emits an x86-64-v3 (AVX2, FMA) clone next to
// the baseline x86-64 one and picks it at load time (ifunc), so a portable build still uses the
// vector units of the machine it runs on. A no-op elsewhere.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define JEM_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define JEM_CPU_MULTIVERSION
#endif

// Micro-kernels of the CPU rolling_attention (csrc/cpu/rolling_attention.cpp): one key block's
// scores, online-softmax update and P V product, per instruction-set level. Kept apart from the
// task driver so each file holds one concern; the driver calls them through RaKernels.
#pragma once

#include <cstdint>

namespace liveavatar_rt::cpu {

constexpr int64_t kTK = 64;      // keys per block
constexpr int64_t kMaxTQ = 256;  // queries per task: packing and K/V reads amortise over them
constexpr int64_t kKR = 8;       // keys per score micro-kernel step
constexpr int64_t kMR = 4;       // query rows per P V micro-kernel step

enum Isa : int { kIsaPortable = 0, kIsaAvx512 = 1, kIsaAvx512Bf16 = 2 };

// One key block's kernels. qk: ST[j][r] = k_j . q_r for j < nk (key rows in the kernel's
// format: fp32, or bf16 for `bf16_keys`; QT [D][TQp] fp32, or [D/2][TQp] bf16 pairs).
// softmax: ST -> P in place, running max m / sum l per query, O rows rescaled.
// pv: O[r][0:D] += sum_j P[j][r] V[j] for r < rows_p, j < steps; P [steps][TQp] and V
// [steps][Dp] hold 32-bit elements: fp32 (a step is a key) or, for pv_pairs, bf16 pairs of
// consecutive keys (low half = even key; see pack_p_pairs): P is then rounded to bf16 as flash
// attention does on GPU (the published run's attention); V already is bf16. pv_pairs is
// nullptr where the CPU has no AVX512-BF16.
struct RaKernels {
  bool bf16_keys;
  void (*qk)(const float* QT, const void* const* krows, float* ST, int64_t nk, int64_t TQp, int64_t D);
  void (*softmax)(float* ST, float* m, float* l, float* O, int64_t rows, int64_t nk, int64_t TQp, int64_t Dp,
                  float scale);
  using Pv = void (*)(const void* P, const void* V, float* O, int64_t rows_p, int64_t steps, int64_t TQp, int64_t D,
                      int64_t Dp);
  Pv pv;
  Pv pv_pairs;
};

// P (fp32 [nk][TQp], after softmax) as bf16 pairs of keys: PP [ceil(nk / 2)][TQp], an odd last
// key paired with 0.
void pack_p_pairs(const float* ST, uint32_t* PP, int64_t nk, int64_t TQp);

// The best level this CPU runs (AVX-512 with or without BF16 dot products, else portable).
int ra_best_isa();
// The kernels of one level (levels above ra_best_isa() must not be asked for).
const RaKernels& ra_kernels(int isa);

}  // namespace liveavatar_rt::cpu

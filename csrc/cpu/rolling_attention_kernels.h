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

// kIsaAmx: bf16 inputs only (fp32 inputs run kIsaAvx512 there); its kernels are the amx_*
// functions below, driven by their own task loop (rolling_attention.cpp), not RaKernels.
enum Isa : int { kIsaPortable = 0, kIsaAvx512 = 1, kIsaAvx512Bf16 = 2, kIsaAmx = 3 };

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

// The best level this CPU runs (AMX, else AVX-512 with or without BF16 dot products, else
// portable).
int ra_best_isa();
// The kernels of one level up to kIsaAvx512Bf16 (levels above ra_best_isa() must not be asked for).
const RaKernels& ra_kernels(int isa);

// ---- kIsaAmx (rolling_attention_amx.cpp): bf16 tile GEMMs, fp32 accumulation ----------------
// Every operand lives in "tiles": 16 rows of 64 bytes, 1 KB contiguous, so each AMX tile load
// reads one contiguous KB. Sizes: rows16 = query rows padded to 16 (nrb = rows16 / 16 row
// blocks), nkp = the block's keys padded to 32, Dk = D padded to 32 (padding is zeros).
//   Qb [nrb][Dk/32][16][32] bf16     queries (A of S = Q K^T)
//   Kb [Dk/32][nkp/16][16][16] u32   keys as bf16 pairs of dims (B, VNNI: pair i of key j)
//   Sb [nrb][nkp/16][16][16] fp32    scores
//   Pb [nrb][nkp/32][16][32] bf16    probabilities, rounded to bf16 (A of O += P V)
//   Vb [nkp/32][Dk/16][16][16] u32   values as bf16 pairs of keys (B, VNNI: keys 2p, 2p+1)
//   Ob [nrb][Dk/16][16][16] fp32     output accumulator
constexpr int64_t kAmxTK = 256;     // keys per block at the AMX level
constexpr int64_t kAmxMaxTQ = 512;  // queries per task there: each task gathers and packs its head's K/V

// AMX usable: the CPU has AMX-BF16 (with AVX512-BF16) and Linux granted this process the tile
// data state (arch_prctl ARCH_REQ_XCOMP_PERM, asked once here).
bool ra_amx_supported();
// Load / release this thread's tile configuration (8 tiles of 16 x 64 bytes) around amx_qk / amx_pv.
void amx_tiles_begin();
void amx_tiles_end();
// Query row r (D bf16; nullptr: a zero row) into Qb.
void amx_pack_q_row(const uint16_t* q, int64_t r, int64_t D, int64_t Dk, uint16_t* Qb);
// Keys 16jb..16jb+15 into Kb (njb = nkp / 16): krows[0:n] (D bf16 each), the other 16 - n zero.
void amx_pack_k16(const uint16_t* const* krows, int64_t n, int64_t jb, int64_t njb, int64_t D, int64_t Dk,
                  uint32_t* Kb);
// Value rows lo, hi (keys 2p, 2p+1; hi nullptr: zero; lo nullptr: both zero) as pair row p of Vb.
void amx_pack_v_pair(const uint16_t* lo, const uint16_t* hi, int64_t p, int64_t D, int64_t Dk, uint32_t* Vb);
// Sb = Qb Kb.
void amx_qk(const uint16_t* Qb, const uint32_t* Kb, float* Sb, int64_t nrb, int64_t nkp, int64_t Dk);
// Online softmax of the nrb * 16 query rows over keys [0, nk) (base 2, `scale` = log2(e) /
// sqrt(D)): running max m / sum l (of the fp32 P), Ob rows rescaled, P into Pb as bf16 (keys
// nk..nkp zero).
void amx_softmax(const float* Sb, uint16_t* Pb, float* m, float* l, float* Ob, int64_t nrb, int64_t nk, int64_t nkp,
                 int64_t Dk, float scale);
// Ob += Pb Vb.
void amx_pv(const uint16_t* Pb, const uint32_t* Vb, float* Ob, int64_t nrb, int64_t nkp, int64_t Dk);
// Output row r: Ob[r][0:D] * inv rounded to bf16 (round to nearest even) into dst.
void amx_store_row(const float* Ob, int64_t r, int64_t D, int64_t Dk, float inv, uint16_t* dst);
// A conditioning key row rotated at its sink position, bf16 -> bf16, as rope_apply (float64
// products and sums, rounded to fp32 then to bf16): rotate_cond_key, vectorised.
void amx_rope_row(const uint16_t* src, const float* cos, const float* sin, int64_t D, uint16_t* dst);

}  // namespace liveavatar_rt::cpu

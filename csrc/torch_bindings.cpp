// Every liveavatar_rt op's schema, registered once, and the CPU kernels behind them.
//
// Python: `import liveavatar_rt._C` (done lazily by liveavatar_rt/_ext.py) runs the static
// registrations below; the ops are then torch.ops.liveavatar_rt.<name>. CUDA kernels register
// against the same schemas from csrc/cuda/*_binding.cu, compiled only where torch has CUDA.
// Fake (meta) implementations for torch.compile / opcheck are registered in Python
// (liveavatar_rt/_ext.py), where symbolic shapes come for free.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

#include <tuple>


TORCH_LIBRARY(liveavatar_rt, m) {
  // WanRMSNorm over the last dim, as liveavatar_rt/ops/norm.py::rms_norm: fp32 statistic, the
  // normalised value rounded to x's dtype, then times weight.to(x.dtype) in x's dtype.
  // x: [..., C] fp32|bf16, weight: [C] -> [..., C] in x's dtype (contiguous).
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  // Out-variant of rms_norm: writes into `out` (contiguous, x's shape and dtype).
  m.def("rms_norm_out(Tensor! out, Tensor x, Tensor weight, float eps) -> ()");
  // adaLN modulation fused in one pass, as liveavatar_rt/ops/modulate.py::modulate:
  // out = out_dtype(fp32(x_norm) * (1 + scale) + shift), with x_norm: [B, L, C] fp32|bf16 and
  // shift, scale: fp32 [B|1, F, C] applied per frame of S = L / F consecutive tokens (F == L:
  // per token, F == 1: per sample); out_dtype fp32|bf16 -> [B, L, C]. Also the block's per-frame
  // form: x_norm [B, F, S, C] with shift, scale [B|1, F|1, 1, C] -> [B, F, S, C].
  m.def("modulate(Tensor x_norm, Tensor shift, Tensor scale, ScalarType out_dtype) -> Tensor");
  // Out-variant of modulate: writes into `out` (contiguous [B, L, C]); out's dtype is out_dtype.
  m.def("modulate_out(Tensor! out, Tensor x_norm, Tensor shift, Tensor scale) -> ()");
  // The block's fp32 residual update, as liveavatar_rt/ops/modulate.py::gated_residual:
  // out = fp32(x) + fp32(y) * gate, with x, y: [B, L, C] fp32|bf16 and gate: fp32 [B|1, F, C]
  // per frame of S = L / F tokens (as modulate's shift) -> fp32 [B, L, C] (contiguous); or the
  // per-frame form x, y [B, F, S, C] with gate [B|1, F|1, 1, C] -> fp32 [B, F, S, C].
  m.def("gated_residual(Tensor x, Tensor y, Tensor gate) -> Tensor");
  // Out-variant of gated_residual: writes into `out` (contiguous fp32 [B, L, C]).
  m.def("gated_residual_out(Tensor! out, Tensor x, Tensor y, Tensor gate) -> ()");
  // LayerNorm over the last dim, as liveavatar_rt/ops/norm.py::layer_norm: fp32 statistics,
  // optional affine weight/bias [C] upcast to fp32. x: [..., C] fp32|bf16 -> fp32 [..., C].
  m.def("layer_norm(Tensor x, Tensor? weight, Tensor? bias, float eps) -> Tensor");
  // The block's norm chains in one pass, as liveavatar_rt/ops/block_norms.py. x, y: [B, L, C]
  // fp32|bf16; shift, scale, gate: fp32 [B|1, F, 1, C] per frame of S = L / F tokens.
  // ln_modulate: modulate(layer_norm(x).to(x.dtype), shift, scale, out_dtype) -> [B, L, C].
  m.def("ln_modulate(Tensor x, Tensor shift, Tensor scale, float eps, ScalarType out_dtype) -> Tensor");
  // residual_norm: r = fp32(x) + fp32(y) * gate (no gate: x + y); n = layer_norm(r, or
  // r.to(out_dtype) when round_input, weight, bias); h = modulate(n, shift, scale, out_dtype)
  // with shift/scale, else n.to(out_dtype) -> (r fp32, h), both [B, L, C].
  m.def("residual_norm(Tensor x, Tensor y, Tensor? gate, Tensor? weight, Tensor? bias, Tensor? shift, "
        "Tensor? scale, float eps, bool round_input, ScalarType out_dtype) -> (Tensor, Tensor)");
  // GELU with the tanh approximation, as liveavatar_rt/ops/activation.py::gelu_tanh: fp32
  // inside, x: [...] fp32|bf16 -> the same shape and dtype (contiguous).
  m.def("gelu_tanh(Tensor x) -> Tensor");
  // One streaming block's attention over [ring cache ; conditioning], as
  // liveavatar_rt/ops/rolling_attention.py: keys = [ring_k[:, :valid] ; rope(cond_k, cos, sin)],
  // values = [ring_v[:, :valid] ; cond_v], exact softmax with fp32 softmax and accumulation,
  // scale 1/sqrt(D). q: [B, Lq, H, D] (rotated), ring_k/ring_v: [B, cap, H, D], cond_k/cond_v:
  // [B, Lc, H, D] (cond_k un-rotated), all fp32|bf16 of one dtype with a contiguous last dim
  // (other dims any stride); cond_cos/cond_sin: fp32 [Lc, D/2] -> [B, Lq, H, D] contiguous.
  m.def("rolling_attention(Tensor q, Tensor ring_k, Tensor ring_v, int valid, Tensor cond_k, Tensor cond_v, "
        "Tensor cond_cos, Tensor cond_sin) -> Tensor");
  // rolling_attention over an FP8 KV cache, as liveavatar_rt/ops/kv_fp8.py::rolling_attention_fp8:
  // ring_k/ring_v: [B, cap, H, D], cond_k/cond_v: [B, Lc, H, D], all float8_e4m3fn (E4M3 codes;
  // contiguous last dim, other dims any stride), each row with one fp32 scale in ring_ks/ring_vs
  // [B, cap, H] and cond_ks/cond_vs [B, Lc, H] (any strides). Every row is dequantized to q's dtype
  // (fp32(code) * scale, one rounding), then exactly rolling_attention. q: [B, Lq, H, D] fp32|bf16
  // (rotated), cond_cos/cond_sin: fp32 [Lc, D/2] -> [B, Lq, H, D] contiguous in q's dtype.
  m.def("rolling_attention_fp8(Tensor q, Tensor ring_k, Tensor ring_v, Tensor ring_ks, Tensor ring_vs, int valid, "
        "Tensor cond_k, Tensor cond_v, Tensor cond_ks, Tensor cond_vs, Tensor cond_cos, Tensor cond_sin) -> Tensor");
  // Tests and benchmarks: rolling_attention / rolling_attention_fp8 at an explicit CPU
  // instruction-set level `isa` (0 portable, 1 AVX-512, 2 AVX512-BF16, 3 AMX; -1 or a level
  // this CPU lacks: its best, rolling_attention_best_isa(); fp32 inputs run at most level 1),
  // so each level can be compared with the reference. The plain ops run the best level.
  m.def("rolling_attention_isa(Tensor q, Tensor ring_k, Tensor ring_v, int valid, Tensor cond_k, Tensor cond_v, "
        "Tensor cond_cos, Tensor cond_sin, int isa) -> Tensor");
  m.def("rolling_attention_fp8_isa(Tensor q, Tensor ring_k, Tensor ring_v, Tensor ring_ks, Tensor ring_vs, int valid, "
        "Tensor cond_k, Tensor cond_v, Tensor cond_ks, Tensor cond_vs, Tensor cond_cos, Tensor cond_sin, int isa) "
        "-> Tensor");
  m.def("rolling_attention_best_isa() -> int", &liveavatar_rt::rolling_attention_best_isa);
  // RMSNorm of q and k over C then RoPE per head, as liveavatar_rt/ops/qk_norm_rope.py.
  // q, k: [B, L, C] fp32|bf16, wq, wk: [C], cos/sin: fp32 [L, D/2], D = C / num_heads
  // -> (q_rot, k_rot, k_normed), each [B, L, H, D] contiguous in q's dtype.
  m.def("qk_norm_rope(Tensor q, Tensor k, Tensor wq, Tensor wk, float eps, Tensor cos, Tensor sin, "
        "int num_heads) -> (Tensor, Tensor, Tensor)");
  // Out-variant of qk_norm_rope: outputs [B, L, H, D] of q's dtype with a contiguous last dim and
  // any other strides (k_rot can be a ring-cache slot view); H is taken from their shape.
  m.def("qk_norm_rope_out(Tensor! q_rot, Tensor! k_rot, Tensor! k_normed, Tensor q, Tensor k, Tensor wq, "
        "Tensor wk, float eps, Tensor cos, Tensor sin) -> ()");
}

TORCH_LIBRARY_IMPL(liveavatar_rt, CPU, m) {
  m.impl("rms_norm", &liveavatar_rt::rms_norm_cpu);
  m.impl("rms_norm_out", &liveavatar_rt::rms_norm_out_cpu);
  m.impl("modulate", &liveavatar_rt::modulate_cpu);
  m.impl("modulate_out", &liveavatar_rt::modulate_out_cpu);
  m.impl("gated_residual", &liveavatar_rt::gated_residual_cpu);
  m.impl("gated_residual_out", &liveavatar_rt::gated_residual_out_cpu);
  m.impl("layer_norm", &liveavatar_rt::layer_norm_cpu);
  m.impl("ln_modulate", &liveavatar_rt::ln_modulate_cpu);
  m.impl("residual_norm", &liveavatar_rt::residual_norm_cpu);
  m.impl("gelu_tanh", &liveavatar_rt::gelu_tanh_cpu);
  m.impl("rolling_attention", &liveavatar_rt::rolling_attention_cpu);
  m.impl("rolling_attention_fp8", &liveavatar_rt::rolling_attention_fp8_cpu);
  m.impl("rolling_attention_isa", &liveavatar_rt::rolling_attention_cpu_isa);
  m.impl("rolling_attention_fp8_isa", &liveavatar_rt::rolling_attention_fp8_cpu_isa);
  m.impl("qk_norm_rope", &liveavatar_rt::qk_norm_rope_cpu);
  m.impl("qk_norm_rope_out", &liveavatar_rt::qk_norm_rope_out_cpu);
}

extern "C" {
// `import liveavatar_rt._C` loads this shared object (running the registrations above) and
// gets an empty module; the ops are reached through torch.ops.liveavatar_rt.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",     // m_name
      nullptr,  // m_doc
      -1,       // m_size
      nullptr,  // m_methods
  };
  return PyModule_Create(&module_def);
}
}

// Pointwise cell functors, one per entry of flashrnn_compile/cells.py (same names as its
// `functor` field, same math, same gate and state order). Shared by the alternating and the
// fused kernels. Plain CUDA C++: no torch headers.
//
// Every functor has
//   static constexpr int G, S;                     gates, states (states[0] is h)
//   template <typename M = AccurateMath> __host__ __device__ static void forward(gx[G], rhb[G], s[S], s_new[S])
//   template <typename M = AccurateMath> __host__ __device__ static void backward(gx[G], rhb[G], s[S], ds_new[S], dgx[G], drhb[G], ds[S])
// (M: the math policy below; callers that name none get the accurate libm functions)
// where, for one (batch, head, dh) element,
//   gx   = pre-activations from the input for each gate      (a slice of gx  [T, B, NH, G, DH])
//   rhb  = R h + b for each gate                              (a slice of rhb [T, B, NH, G, DH])
//   s    = states entering the step, s_new the states after it (slices of   [S, B, NH, DH])
//   ds_new = dL/ds_new; backward gives dL/dgx, dL/drhb and the pointwise part of dL/ds (the
//   part through R h is the caller's GEMM, so ds[0] carries only direct uses of h).
// All arithmetic is float32 (fp32 states and accumulation for every input dtype). The functors
// also compile for the host, where tests/test_cells_cuh.py checks them against cells.py on CPU.
#pragma once

#include <math.h>

namespace flashrnn {

__host__ __device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)), stable for any x (as torch's logsigmoid)
__host__ __device__ __forceinline__ float logsigmoidf(float x) {
  return fminf(x, 0.0f) - log1pf(expf(-fabsf(x)));
}

// Math policies: every functor's forward/backward takes one as a template argument (default
// AccurateMath: the libm calls above, the behaviour the alternating kernels and the host harness
// use). FastMath (device only, opt-in: the fused kernels) uses the SFU's ex2.approx / rcp.approx:
// exp, sigmoid and tanh within a few float32 ulps absolute (tanh(x) = 1 - 2 / (1 + 2^(2x log2 e))),
// division as a * rcp(b). ApproxMath (device only) is FastMath with tanh.approx.f32 (one SFU op,
// relative error <= 2^-10.99) for tanh and sigmoid(x) = 0.5 + 0.5 tanh(x / 2): half the SFU ops,
// for bfloat16 inputs whose own rounding (2^-9) is 4x coarser.
struct AccurateMath {
  __host__ __device__ static float exp(float x) { return expf(x); }
  __host__ __device__ static float sigmoid(float x) { return sigmoidf(x); }
  __host__ __device__ static float tanh(float x) { return tanhf(x); }
  __host__ __device__ static float logsigmoid(float x) { return logsigmoidf(x); }
  __host__ __device__ static float div(float a, float b) { return a / b; }
};

#ifdef __CUDACC__
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float rcp_approx(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

struct FastMath {
  static constexpr float LOG2E = 1.4426950408889634f;
  __device__ static float exp(float x) { return ex2_approx(x * LOG2E); }
  __device__ static float sigmoid(float x) { return rcp_approx(1.0f + ex2_approx(-x * LOG2E)); }
  __device__ static float tanh(float x) { return fmaf(-2.0f, rcp_approx(1.0f + ex2_approx(2.0f * LOG2E * x)), 1.0f); }
  __device__ static float logsigmoid(float x) { return fminf(x, 0.0f) - log1pf(exp(-fabsf(x))); }
  __device__ static float div(float a, float b) { return a * rcp_approx(b); }
};

struct ApproxMath : FastMath {
  __device__ static float sigmoid(float x) { return fmaf(0.5f, tanh_approx(0.5f * x), 0.5f); }
  __device__ static float tanh(float x) { return tanh_approx(x); }
};
#endif

// lstm: gates (i, f, g, o), states (h, c)
struct LstmCell {
  static constexpr int G = 4, S = 2;
  template <typename M = AccurateMath>
  __host__ __device__ static void forward(const float* gx, const float* rhb, const float* s, float* s_new) {
    const float i = M::sigmoid(gx[0] + rhb[0]);
    const float f = M::sigmoid(gx[1] + rhb[1]);
    const float g = M::tanh(gx[2] + rhb[2]);
    const float o = M::sigmoid(gx[3] + rhb[3]);
    const float c = f * s[1] + i * g;
    s_new[0] = o * M::tanh(c);
    s_new[1] = c;
  }
  template <typename M = AccurateMath>
  __host__ __device__ static void backward(const float* gx, const float* rhb, const float* s,
                                  const float* ds_new, float* dgx, float* drhb, float* ds) {
    const float i = M::sigmoid(gx[0] + rhb[0]);
    const float f = M::sigmoid(gx[1] + rhb[1]);
    const float g = M::tanh(gx[2] + rhb[2]);
    const float o = M::sigmoid(gx[3] + rhb[3]);
    const float c = f * s[1] + i * g;
    const float tc = M::tanh(c);
    const float dc = ds_new[1] + ds_new[0] * o * (1.0f - tc * tc);
    dgx[0] = dc * g * i * (1.0f - i);
    dgx[1] = dc * s[1] * f * (1.0f - f);
    dgx[2] = dc * i * (1.0f - g * g);
    dgx[3] = ds_new[0] * tc * o * (1.0f - o);
    for (int k = 0; k < G; ++k) drhb[k] = dgx[k];
    ds[0] = 0.0f;
    ds[1] = dc * f;
  }
};

// gru: gates (r, z, n), state (h); n = tanh(gx_n + r * (R_n h + b_n)), h' = (1 - z) n + z h
struct GruCell {
  static constexpr int G = 3, S = 1;
  template <typename M = AccurateMath>
  __host__ __device__ static void forward(const float* gx, const float* rhb, const float* s, float* s_new) {
    const float r = M::sigmoid(gx[0] + rhb[0]);
    const float z = M::sigmoid(gx[1] + rhb[1]);
    const float n = M::tanh(gx[2] + r * rhb[2]);
    s_new[0] = (1.0f - z) * n + z * s[0];
  }
  template <typename M = AccurateMath>
  __host__ __device__ static void backward(const float* gx, const float* rhb, const float* s,
                                  const float* ds_new, float* dgx, float* drhb, float* ds) {
    const float r = M::sigmoid(gx[0] + rhb[0]);
    const float z = M::sigmoid(gx[1] + rhb[1]);
    const float n = M::tanh(gx[2] + r * rhb[2]);
    const float dh = ds_new[0];
    const float dn_pre = dh * (1.0f - z) * (1.0f - n * n);
    const float dr_pre = dn_pre * rhb[2] * r * (1.0f - r);
    const float dz_pre = dh * (s[0] - n) * z * (1.0f - z);
    dgx[0] = dr_pre;
    dgx[1] = dz_pre;
    dgx[2] = dn_pre;
    drhb[0] = dr_pre;
    drhb[1] = dz_pre;
    drhb[2] = dn_pre * r;
    ds[0] = dh * z;
  }
};

// elman_tanh: gate (a,), state (h); h' = tanh(a)
struct ElmanTanhCell {
  static constexpr int G = 1, S = 1;
  template <typename M = AccurateMath>
  __host__ __device__ static void forward(const float* gx, const float* rhb, const float*, float* s_new) {
    s_new[0] = M::tanh(gx[0] + rhb[0]);
  }
  template <typename M = AccurateMath>
  __host__ __device__ static void backward(const float* gx, const float* rhb, const float*,
                                  const float* ds_new, float* dgx, float* drhb, float* ds) {
    const float h = M::tanh(gx[0] + rhb[0]);
    dgx[0] = drhb[0] = ds_new[0] * (1.0f - h * h);
    ds[0] = 0.0f;
  }
};

// elman_relu: gate (a,), state (h); h' = relu(a)
struct ElmanReluCell {
  static constexpr int G = 1, S = 1;
  template <typename M = AccurateMath>
  __host__ __device__ static void forward(const float* gx, const float* rhb, const float*, float* s_new) {
    s_new[0] = fmaxf(gx[0] + rhb[0], 0.0f);
  }
  template <typename M = AccurateMath>
  __host__ __device__ static void backward(const float* gx, const float* rhb, const float*,
                                  const float* ds_new, float* dgx, float* drhb, float* ds) {
    dgx[0] = drhb[0] = (gx[0] + rhb[0]) > 0.0f ? ds_new[0] : 0.0f;
    ds[0] = 0.0f;
  }
};

// slstm: gates (i, f, z, o), states (h, c, n, m); exponential input gate, sigmoid forget gate
// in log space, stabiliser m:
//   m' = max(i, m + logsigmoid(f)), i' = exp(i - m'), f' = exp(m + logsigmoid(f) - m')
//   c' = f' c + i' tanh(z), n' = f' n + i', h' = sigmoid(o) c' / n'
struct SlstmCell {
  static constexpr int G = 4, S = 4;
  template <typename M = AccurateMath>
  __host__ __device__ static void forward(const float* gx, const float* rhb, const float* s, float* s_new) {
    const float i_raw = gx[0] + rhb[0];
    const float a = s[3] + M::logsigmoid(gx[1] + rhb[1]);
    const float m = fmaxf(i_raw, a);
    const float ig = M::exp(i_raw - m);
    const float fg = M::exp(a - m);
    const float c = fg * s[1] + ig * M::tanh(gx[2] + rhb[2]);
    const float n = fg * s[2] + ig;
    s_new[0] = M::div(M::sigmoid(gx[3] + rhb[3]) * c, n);
    s_new[1] = c;
    s_new[2] = n;
    s_new[3] = m;
  }
  template <typename M = AccurateMath>
  __host__ __device__ static void backward(const float* gx, const float* rhb, const float* s,
                                  const float* ds_new, float* dgx, float* drhb, float* ds) {
    const float i_raw = gx[0] + rhb[0];
    const float f_raw = gx[1] + rhb[1];
    const float a = s[3] + M::logsigmoid(f_raw);
    const float m = fmaxf(i_raw, a);
    const float ig = M::exp(i_raw - m);
    const float fg = M::exp(a - m);
    const float zt = M::tanh(gx[2] + rhb[2]);
    const float og = M::sigmoid(gx[3] + rhb[3]);
    const float c = fg * s[1] + ig * zt;
    const float n = fg * s[2] + ig;
    const float dh = ds_new[0];
    const float dc = ds_new[1] + M::div(dh * og, n);
    const float dn = ds_new[2] - M::div(dh * og * c, n * n);
    const float d_ig = dc * zt + dn;         // dL/d(i')
    const float d_fg = dc * s[1] + dn * s[2];  // dL/d(f')
    const float dm = ds_new[3] - d_ig * ig - d_fg * fg;
    // m' = max(i_raw, a): ties split the gradient in half (as torch.maximum)
    const float w_i = i_raw > a ? 1.0f : (i_raw < a ? 0.0f : 0.5f);
    const float di_raw = d_ig * ig + dm * w_i;
    const float da = d_fg * fg + dm * (1.0f - w_i);
    dgx[0] = di_raw;
    dgx[1] = da * M::sigmoid(-f_raw);  // d logsigmoid(x) / dx = sigmoid(-x)
    dgx[2] = dc * ig * (1.0f - zt * zt);
    dgx[3] = dh * M::div(c, n) * og * (1.0f - og);
    for (int k = 0; k < G; ++k) drhb[k] = dgx[k];
    ds[0] = 0.0f;
    ds[1] = dc * fg;
    ds[2] = dn * fg;
    ds[3] = da;
  }
};

// The registry, for code that instantiates a template once per cell: X(Functor, "name").
#define FLASHRNN_FOR_EACH_CELL(X) \
  X(LstmCell)                     \
  X(GruCell)                      \
  X(ElmanTanhCell)                \
  X(ElmanReluCell)                \
  X(SlstmCell)

}  // namespace flashrnn

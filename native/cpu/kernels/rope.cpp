// Tachyon CPU kernel (ISA variant): rotary position embedding, in place on
// x[tokens, heads, head_dim]; only the first rot_dim dims of each head rotate, the rest
// are left untouched (not even rewritten).
//
// Angles follow llama.cpp's CPU rope exactly (ggml_rope_cache_init + rope_yarn with
// ext_factor = 0, attn_factor = 1, no freq_factors), all in f32:
//   theta_scale = powf(freq_base, -2.0f / rot_dim)
//   theta_0 = (float)pos;  theta_{i+1} = theta_i * theta_scale       (running product)
//   angle_i = freq_scale * theta_i;  c_i = cosf(angle_i), s_i = sinf(angle_i)   (libm)
// so our cos/sin tables are bit-identical to llama.cpp's for the same libm. They are
// built once per token (rot_dim/2 sincos) into per-thread scratch and shared by all
// heads. Rotation, per pair (a, b) = (2i, 2i+1) [normal] or (i, i + rot_dim/2) [neox]:
//   a' = a*c_i - b*s_i,   b' = a*s_i + b*c_i
#include "act_vec.h"
#include "kernels.h"

TY_VARIANT_BEGIN
namespace {

using namespace av;

template <DType T, bool NEOX>
void rope_tokens(const RopeArgs& a, float theta_scale, int64_t t0, int64_t t1, float* cs) {
  const int64_t rot = a.rot_dim, half = rot / 2, hd = a.head_dim;
  // normal (SIMD): cs[0, rot) = cos duplicated per pair, cs[rot, 2rot) = (-sin, +sin)
  // neox or scalar: cs[0, half) = cos, cs[half, rot) = sin
  float* c = cs;
  float* s = cs + (NEOX || VL == 1 ? half : rot);
  for (int64_t t = t0; t < t1; ++t) {
    float theta = (float)a.positions[t];
    for (int64_t i = 0; i < half; ++i) {
      const float ang = a.freq_scale * theta;
      const float ci = ::cosf(ang), si = ::sinf(ang);
      if (NEOX || VL == 1) {
        c[i] = ci;
        s[i] = si;
      } else {
        c[2 * i] = c[2 * i + 1] = ci;
        s[2 * i] = -si;
        s[2 * i + 1] = si;
      }
      theta *= theta_scale;
    }
    for (int64_t h = 0; h < a.heads; ++h) {
      void* x = at<T>(a.x, (t * a.heads + h) * hd);
#if defined(TY_AV_SIMD)
      if (NEOX) {
        void* y = at<T>(x, half);
        int64_t i = 0;
        for (; i + VL <= half; i += VL) {
          const vf xa = vld<T>(x, i), xb = vld<T>(y, i);
          const vf vc = vld<DType::f32>(c, i), vs = vld<DType::f32>(s, i);
          vst<T>(x, i, vsub(vmul(xa, vc), vmul(xb, vs)));
          vst<T>(y, i, vfma(xa, vs, vmul(xb, vc)));
        }
        if (i < half) {
          const int r = (int)(half - i);
          const vf xa = vld_n<T>(x, i, r), xb = vld_n<T>(y, i, r);
          const vf vc = vld_n<DType::f32>(c, i, r), vs = vld_n<DType::f32>(s, i, r);
          vst_n<T>(x, i, vsub(vmul(xa, vc), vmul(xb, vs)), r);
          vst_n<T>(y, i, vfma(xa, vs, vmul(xb, vc)), r);
        }
      } else {
        int64_t j = 0;  // rot and VL are even, so a tail never splits a pair
        for (; j + VL <= rot; j += VL) {
          const vf v = vld<T>(x, j);
          vst<T>(x, j, vfma(vswap_pairs(v), vld<DType::f32>(s, j), vmul(v, vld<DType::f32>(c, j))));
        }
        if (j < rot) {
          const int r = (int)(rot - j);
          const vf v = vld_n<T>(x, j, r);
          vst_n<T>(x, j, vfma(vswap_pairs(v), vld_n<DType::f32>(s, j, r), vmul(v, vld_n<DType::f32>(c, j, r))), r);
        }
      }
#else
      const int64_t stride = NEOX ? 1 : 2, off = NEOX ? half : 1;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t ia = i * stride, ib = ia + off;
        const float xa = ld<T>(x, ia), xb = ld<T>(x, ib);
        st<T>(x, ia, xa * c[i] - xb * s[i]);
        st<T>(x, ib, xa * s[i] + xb * c[i]);
      }
#endif
    }
  }
}

template <DType T, bool NEOX>
void rope_t(const RopeArgs& a, Parallel& par) {
  const float theta_scale = ::powf(a.freq_base, -2.0f / (float)a.rot_dim);
  const int64_t per_token = a.heads * a.rot_dim + 8 * a.rot_dim;  // + the sincos work
  par_chunks(par, a.tokens, rows_per_task(per_token), [&](int64_t t0, int64_t t1, int th) {
    float* cs = static_cast<float*>(par.scratch(th, (size_t)a.rot_dim * 2 * sizeof(float)));
    rope_tokens<T, NEOX>(a, theta_scale, t0, t1, cs);
  });
}

}  // namespace

void rope(const RopeArgs& args, Parallel& par) {
  if (args.tokens <= 0 || args.heads <= 0 || args.rot_dim <= 0) return;
  with_act_dtype(args.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    if (args.neox) rope_t<T, true>(args, par);
    else rope_t<T, false>(args, par);
  });
}

TY_VARIANT_END

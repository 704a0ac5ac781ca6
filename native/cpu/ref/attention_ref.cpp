// Tachyon: float64 reference for paged attention. See attention_ref.h.
#include "ref/attention_ref.h"

#include <cmath>
#include <limits>

namespace ty::ref {

void attention_ref(const AttnRefArgs& a, AttnRefOut& out) {
  const int64_t D = a.headDim, H = a.qHeads, KH = a.kvHeads, G = H / KH;
  out.o.assign((size_t)(a.qlen * H * D), 0.0);
  out.lse.assign((size_t)(a.qlen * H), -std::numeric_limits<double>::infinity());
  out.dotMag.assign((size_t)(a.qlen * H), 0.0);
  out.vMax.assign((size_t)(a.qlen * H), 0.0);
  out.count.assign((size_t)(a.qlen * H), 0);
  std::vector<double> s((size_t)a.kvLen);
  for (int64_t i = 0; i < a.qlen; ++i) {
    const int64_t hiPos = a.kvLen - a.qlen + i;  // inclusive
    int64_t loPos = a.window > 0 ? hiPos - a.window + 1 : 0;
    if (loPos < 0) loPos = 0;
    if (loPos < a.kvBegin) loPos = a.kvBegin;
    const int64_t endPos = hiPos + 1 < a.kvEnd ? hiPos + 1 : a.kvEnd;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / G, row = i * H + h;
      const float* q = a.q + row * D;
      double m = -std::numeric_limits<double>::infinity(), mag = 0, vmax = 0;
      for (int64_t t = loPos; t < endPos; ++t) {
        const float* k = a.k + (t * KH + kh) * D;
        double dot = 0, dm = 0;
        for (int64_t d = 0; d < D; ++d) {
          dot += (double)q[d] * (double)k[d];
          dm += std::fabs((double)q[d] * (double)k[d]);
        }
        double x = a.smScale * dot;
        if (a.softCap > 0) x = a.softCap * std::tanh(x / a.softCap);
        s[(size_t)t] = x;
        if (x > m) m = x;
        if (std::fabs(a.smScale) * dm > mag) mag = std::fabs(a.smScale) * dm;
        const float* v = a.v + (t * KH + kh) * D;
        for (int64_t d = 0; d < D; ++d) vmax = std::fmax(vmax, std::fabs((double)v[d]));
      }
      out.dotMag[(size_t)row] = mag;
      out.vMax[(size_t)row] = vmax;
      out.count[(size_t)row] = endPos > loPos ? endPos - loPos : 0;
      if (endPos <= loPos) continue;
      double l = 0;
      double* o = &out.o[(size_t)(row * D)];
      for (int64_t t = loPos; t < endPos; ++t) {
        const double p = std::exp(s[(size_t)t] - m);
        l += p;
        const float* v = a.v + (t * KH + kh) * D;
        for (int64_t d = 0; d < D; ++d) o[d] += p * (double)v[d];
      }
      for (int64_t d = 0; d < D; ++d) o[d] /= l;
      out.lse[(size_t)row] = m + std::log(l);
    }
  }
}

}  // namespace ty::ref

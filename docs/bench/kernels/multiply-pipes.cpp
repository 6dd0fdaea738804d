// A measurement, not the project's code: whether VPDPBUSD shares the Zen 4 VM's vector pipes with FMA and
// VCVTDQ2PS (one core, registers only, 8 independent VPDPBUSD chains per iteration; mode 1 adds 3 FMAs,
// mode 2 3 FMAs and a conversion, mode 3 8 FMAs on 4 chains: latency-bound, ignore).
//   g++ -O2 -mavx512f -mavx512vnni multiply-pipes.cpp -o pipes && ./pipes
// 2026-12-08, 2-vCPU AMD EPYC (Zen 4) VM: mode 0 1.48 G VPDPBUSD/s, mode 1 1.18 (1.62 G ops/s in all),
// mode 2 1.08 (1.62 G ops/s): they share the pipes, so every FMA or conversion beside the products costs
// about one VPDPBUSD (docs/bench/measurements.md#multiply-pipes).
#include <immintrin.h>
#include <chrono>
#include <cstdio>
static inline __m512i dp(__m512i a, __m512i b, __m512i c){ asm("vpdpbusd %2, %1, %0" : "+v"(a) : "v"(b), "v"(c)); return a;}
static inline __m512 fm(__m512 a, __m512 b, __m512 c){ asm("vfmadd231ps %2, %1, %0" : "+v"(a) : "v"(b), "v"(c)); return a;}
static inline __m512 cv(__m512i a){ __m512 r; asm("vcvtdq2ps %1, %0" : "=v"(r) : "v"(a)); return r;}
int main(){
  const long N = 200000000;
  __m512i a[12]; __m512 f[4]; __m512i b=_mm512_set1_epi8(1), c=_mm512_set1_epi8(2);
  __m512 x=_mm512_set1_ps(1.0001f), y=_mm512_set1_ps(0.9999f);
  for(int i=0;i<12;i++) a[i]=_mm512_setzero_si512(); for(int i=0;i<4;i++) f[i]=_mm512_setzero_ps();
  for (int mode=0; mode<4; ++mode){
    auto t=std::chrono::steady_clock::now();
    for(long i=0;i<N/8;i++){
      for(int j=0;j<8;j++) a[j]=dp(a[j],b,c);
      if(mode==1){ for(int j=0;j<3;j++) f[j]=fm(f[j],x,y); }
      if(mode==2){ for(int j=0;j<3;j++) f[j]=fm(f[j],x,y); f[3]=cv(a[0]); }
      if(mode==3){ for(int j=0;j<8;j++) f[j&3]=fm(f[j&3],x,y); }
    }
    double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t).count();
    long s2=0; for(int i=0;i<12;i++) s2+=_mm512_reduce_add_epi32(a[i]); float s3=0; for(int i=0;i<4;i++) s3+=_mm512_reduce_add_ps(f[i]);
    printf("mode %d: %.3f G dpbusd/s (one core)  [%ld %f]\n", mode, N/s/1e9, s2, s3);
  }
}

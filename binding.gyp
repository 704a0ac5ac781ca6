# Secondary build (node-gyp): CPU backend only. Reads the same native/sources.json as
# CMakeLists.txt; tests/build-sources.test.ts checks that the two stay in step.
{
  "variables": {
    "ty_common_cflags": ["-O3", "-fno-math-errno", "-fvisibility=hidden", "-std=c++17", "-fPIC", "-Wno-unused-function"]
  },
  "target_defaults": {
    "include_dirs": ["native/include", "native/cpu"],
    "cflags_cc": ["<@(ty_common_cflags)"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
    "cflags!": ["-fno-exceptions"]
  },
  "targets": [
    {
      "target_name": "ty_cpu_scalar",
      "type": "static_library",
      "sources": ["<!@(node -p \"require('./native/sources.json').cpu_variant.join(' ')\")"],
      "defines": ["TY_ISA=scalar"],
      "cflags_cc": ["<!@(node -p \"require('./native/sources.json').isa_flags.scalar.join(' ')\")"]
    },
    {
      "target_name": "ty_cpu_avx2",
      "type": "static_library",
      "sources": ["<!@(node -p \"require('./native/sources.json').cpu_variant.join(' ')\")"],
      "defines": ["TY_ISA=avx2"],
      "cflags_cc": ["<!@(node -p \"require('./native/sources.json').isa_flags.avx2.join(' ')\")"]
    },
    {
      "target_name": "ty_cpu_avx512",
      "type": "static_library",
      "sources": ["<!@(node -p \"require('./native/sources.json').cpu_variant.join(' ')\")"],
      "defines": ["TY_ISA=avx512"],
      "cflags_cc": ["<!@(node -p \"require('./native/sources.json').isa_flags.avx512.join(' ')\")"]
    },
    {
      "target_name": "tachyon",
      "sources": [
        "<!@(node -p \"require('./native/sources.json').core.join(' ')\")",
        "<!@(node -p \"require('./native/sources.json').napi.join(' ')\")"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "dependencies": ["ty_cpu_scalar", "ty_cpu_avx2", "ty_cpu_avx512"],
      "libraries": ["-lpthread"]
    }
  ]
}

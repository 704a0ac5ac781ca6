import * as os from 'node:os';
import { loadBinding, loadedBindingPath } from './binding';
import { version } from '../version';

export interface DoctorReport {
  version: string;
  node: string;
  platform: string;
  binding: { loaded: boolean; path?: string; error?: string };
  cpu: string;
  isaDetected: string;
  isaInUse: string;
  isaOverride?: string;
  threads: number;
  backends: { name: string; compiled: boolean; usable: boolean; reason?: string }[];
  cudaArchs: string[];
  compiler?: string;
}

/** What this installation can do, and why not where it cannot. */
export function doctor(): DoctorReport {
  const base = {
    version,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    threads: Number(process.env.TACHYON_THREADS) || os.availableParallelism(),
  };
  let b;
  try {
    b = loadBinding();
  } catch (e) {
    return {
      ...base,
      binding: { loaded: false, error: (e as Error).message },
      cpu: os.cpus()[0]?.model ?? 'unknown',
      isaDetected: 'unknown',
      isaInUse: 'unknown',
      backends: [{ name: 'cpu', compiled: false, usable: false, reason: 'native addon not built' }],
      cudaArchs: [],
    };
  }
  const d = b.doctor();
  const override = process.env.TACHYON_ISA;
  const archs = d.cudaArchs ? String(d.cudaArchs).split(',').filter(Boolean) : [];
  const cudaReason = !d.cudaCompiled
    ? 'not compiled into this build (nvcc not found at build time, or TACHYON_CUDA=off)'
    : d.cudaDevices > 0
      ? undefined
      : `no usable device: ${d.cudaReason}`;
  return {
    ...base,
    binding: { loaded: true, path: loadedBindingPath() },
    cpu: d.cpu,
    isaDetected: d.isaDetected,
    isaInUse: override || d.isaDetected,
    isaOverride: override,
    backends: [
      { name: 'cpu', compiled: true, usable: true },
      {
        name: 'cuda',
        compiled: !!d.cudaCompiled,
        usable: !!d.cudaCompiled && d.cudaDevices > 0,
        ...(cudaReason ? { reason: cudaReason } : {}),
      },
      {
        name: 'cuda-emu',
        compiled: !!d.cudaEmuCompiled,
        usable: !!d.cudaEmuCompiled,
        ...(d.cudaEmuCompiled
          ? {}
          : {
              reason:
                'not compiled into this build (the CUDA headers were not found at build time)',
            }),
      },
    ],
    cudaArchs: archs,
    compiler: d.compiler,
  };
}

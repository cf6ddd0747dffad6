"""What the per-step stop agreement of the train loop costs: `StopSignal.agreed()` (a MAX all-reduce of one integer over
the ranks' own gloo group) between N local processes, median and 99th percentile over many calls.

Usage: python bench/stop_agreement.py [--processes 2] [--calls 2000]"""
import argparse, os, socket, statistics, time
import torch, torch.distributed as dist, torch.multiprocessing as mp
from codecomplete.distributed import StopSignal


def rank_main(rank: int, world: int, port: int, calls: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    stop = StopSignal(world)
    try:
        for _ in range(50): stop.agreed()  # warm up the connections
        times = []
        for _ in range(calls):
            start = time.perf_counter(); stop.agreed(); times.append(time.perf_counter() - start)
        if rank == 0:
            times.sort()
            print(f"StopSignal.agreed() over {world} gloo processes, {calls} calls: median {statistics.median(times) * 1e6:.0f} us, "
                  f"p99 {times[int(0.99 * len(times))] * 1e6:.0f} us")
    finally:
        stop.restore(); dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2); ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    torch.set_num_threads(1)
    mp.spawn(rank_main, args=(args.processes, port, args.calls), nprocs=args.processes)


if __name__ == "__main__": main()

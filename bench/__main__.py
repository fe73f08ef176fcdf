"""Run every benchmark and print ratio tables (`make bench`)."""

from bench import backfill, evaluator, killswitch, killswitch_load, propagation, router, rpc

if __name__ == "__main__":
    print("Ripcord benchmarks: each number is compared with a baseline measured in this run.")
    evaluator.report()
    rpc.report()
    propagation.report()
    killswitch.report()
    killswitch_load.report()
    router.report()
    backfill.report()

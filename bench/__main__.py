"""Run every benchmark and print ratio tables (`make bench`)."""

from bench import evaluator, killswitch, propagation, router, rpc

if __name__ == "__main__":
    print("Ripcord benchmarks: each number is compared with a baseline measured in this run.")
    evaluator.report()
    rpc.report()
    propagation.report()
    killswitch.report()
    router.report()

"""``python -m agentfleet.bench http|sandbox|fleet ...``"""

from agentfleet.bench.cli import bench_app

if __name__ == "__main__":
    bench_app(prog_name="agentfleet bench")

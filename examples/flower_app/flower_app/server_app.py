"""flower-app: a Flower ServerApp (Message API) running FedAvg, with fedmia recording what the server sees."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedmia.flower import RecordingStrategy, describe_recording
from flower_app.task import BATCH_SIZE, Net, load_test, partition_indices, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    rounds, lr, hidden = int(rc["num-server-rounds"]), float(rc["lr"]), int(rc["hidden"])
    num_partitions = int(rc["num-partitions"])
    run_dir = Path(str(rc["run-dir"]))
    model = Net(hidden=hidden)
    x_test, y_test = load_test()

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(model, x_test, y_test)
        print(f"round {server_round}: test loss {loss:.3f}, test accuracy {accuracy:.3f}")
        return MetricRecord({"test_loss": loss, "test_accuracy": accuracy})

    # your strategy, wrapped: every round's global model and every client's update go to run_dir
    strategy = RecordingStrategy(FedAvg(fraction_train=float(rc["fraction-train"]), fraction_evaluate=0.0), run_dir)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=rounds,
        evaluate_fn=central_evaluate,
    )
    torch.save(result.arrays.to_torch_state_dict(), run_dir / "final_model.pt")

    # what fedmia attack needs besides the recording: who held which records, the model, how clients trained
    describe_recording(
        run_dir,
        clients={p: partition_indices(p, num_partitions) for p in range(num_partitions)},
        dataset={"dataset": "digits"},  # the same records in the same order as task.digits()
        model={"name": "flower_app.task:Net", "params": {"hidden": hidden}},
        config={
            "seed": 0,
            "federation": {"local_epochs": int(rc["local-epochs"]), "lr": lr, "fraction": float(rc["fraction-train"])},
            "train": {"batch_size": BATCH_SIZE, "lr": lr, "optimizer": "sgd", "momentum": 0.9},
            "audit": {
                "references": 4,
                "server_references": 2,
                "attacks": ["loss", "lira-online"],
                "federated_attacks": ["loss-trajectory"],
            },
        },
    )
    print(f"recorded {rounds} rounds in {run_dir}; attack them with: fedmia attack {run_dir}")

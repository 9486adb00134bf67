"""flower-app: a Flower ClientApp (Message API) training on its partition."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_app.task import Net, load_data, train

app = ClientApp()


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's partition and send it back."""
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    config = msg.content["config"]
    model = Net(hidden=int(context.run_config["hidden"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(partition_id, num_partitions)
    epochs, lr = int(context.run_config["local-epochs"]), float(config["lr"])
    seed = 1000 * int(config["server-round"]) + partition_id  # repeatable local shuffles
    loss = train(model, x, y, epochs, lr, seed=seed)
    metrics = {
        "train_loss": loss,
        "num-examples": len(y),
        "partition-id": partition_id,  # which client this is: the server's recording needs it
    }
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)

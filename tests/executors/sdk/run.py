"""A contract-test executor written with YMIR's own SDK (ymir-exc 1.1.0), unmodified protocol-1.0 forms."""

import os

from ymir_exc import dataset_reader, env, monitor, result_writer


def main() -> None:
    config = env.get_executor_config()
    current = env.get_current_env()
    monitor.write_monitor_logger(percent=0.1)
    if current.run_training:
        paths = [a for a, _ in dataset_reader.item_paths(dataset_reader.DatasetType.TRAINING)]
        os.makedirs(current.output.models_dir, exist_ok=True)
        with open(os.path.join(current.output.models_dir, "model.txt"), "w") as f:
            f.write(f"trained on {len(paths)} images, classes {config['class_names']}\n")
        result_writer.write_training_result(model_names=["model.txt"], mAP=0.42, classAPs={})
    if current.run_mining:
        paths = [a for a, *_ in dataset_reader.item_paths(dataset_reader.DatasetType.CANDIDATE)]
        result_writer.write_mining_result([(p, i / len(paths)) for i, p in enumerate(paths)])
    if current.run_infer:
        paths = [a for a, *_ in dataset_reader.item_paths(dataset_reader.DatasetType.CANDIDATE)]
        box = result_writer.Box(x=1, y=1, w=4, h=3)
        name = config["class_names"][0]
        result_writer.write_infer_result(
            {p: [result_writer.Annotation(class_name=name, score=0.8, box=box)] for p in paths}
        )
    monitor.write_monitor_logger(percent=1.0)
    print("sdk executor done")


if __name__ == "__main__":
    main()

"""The CIFAR-10 example's function stages: prepare -> train -> evaluate.

Each module has one function ``f(params, **paths) -> metrics``, declared with
``hpcpipe.stage_function`` (its params schema) and named in dvc.yaml as

    hpcpipe run train --fn hpcpipe.stages.train:train --prepared data/prepared --model ...

The launcher knows none of them: it reads the declaration, checks the params the
stage lists in dvc.yaml against the schema, and asks DVC which paths are outputs.
Each function never knows how it was launched; torch is imported inside it, in the job.
"""

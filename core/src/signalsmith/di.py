"""What route handlers declare to receive the process's runtime (Litestar dependency injection).

The collector app provides a dependency named ``runtime`` to every route, a plugin's included:

    @get("/mine")
    async def mine(runtime: RuntimeDependency) -> ...:
        store = runtime.attached("my-plugin", MyStore)
"""

from __future__ import annotations

from litestar.di import NamedDependency

from signalsmith.runtime import Runtime

RuntimeDependency = NamedDependency[Runtime]

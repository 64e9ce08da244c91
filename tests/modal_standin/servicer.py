"""The gRPC half of the stand-in: the RPCs that our Modal paths make, nothing more.

Every RPC of ``modal_proto.api_grpc.ModalClientBase`` that is not defined here
answers ``UNIMPLEMENTED`` (the modal client raises ``UnimplementedError``) and
is recorded in ``StandIn.unimplemented``, so a new code path that needs one
fails loudly instead of hanging.

Function bodies run "in a container": in a thread of this process, through the
object's ``.local()`` (the module and name come from the definition that
``FunctionCreate`` carried), with the arguments deserialised and the result or
exception serialised exactly as Modal's container runtime does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import inspect
import itertools
import os
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import grpclib.const
from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from modal._runtime.execution_context import _set_current_context_ids
from modal._serialization import (
    deserialize,
    deserialize_data_format,
    deserialize_proto_params,
    pickle_exception,
    pickle_traceback,
    serialize_data_format,
)
from modal._utils.blob_utils import BLOCK_SIZE, MAX_OBJECT_SIZE_BYTES
from modal._utils.jwt_utils import DecodedJwt
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

from . import containers as _containers
from .containers import Container, Kill, View, running_in
from .images import image_metadata

if TYPE_CHECKING:
    from .server import StandIn

#: Pass as an injection (``StandIn.inject(tag, TIMEOUT)``) to make the next call time out.
TIMEOUT = object()

_PICKLE = api_pb2.DATA_FORMAT_PICKLE
_GENERATOR_DONE = api_pb2.DATA_FORMAT_GENERATOR_DONE
_DATA_POLL = 0.02  # seconds between looks at a running generator's new items
_OUTPUTS_WAIT_CAP = 55.0  # seconds; the client polls again after this


@dataclass
class FunctionRecord:
    """A function (or class service function, or a bound variant of one) the client created."""

    function_id: str
    app_id: str
    tag: str  # e.g. "manifest", or "Writer.*" for the service function of class Writer
    module_name: str = ""
    timeout: float | None = None
    gpus: list[str] = field(default_factory=list)  # GPU types asked for, in fallback order
    metadata: api_pb2.FunctionHandleMetadata = field(default_factory=api_pb2.FunctionHandleMetadata)
    definition: Any = None  # api_pb2.Function or api_pb2.FunctionData
    base_id: str | None = None  # set for variants made by FunctionBindParams
    params: dict[str, Any] = field(default_factory=dict)
    options: api_pb2.FunctionOptions | None = None

    @property
    def is_class(self) -> bool:
        return self.tag.endswith(".*")


@dataclass
class Call:
    """One input of a function call (a ``.remote()``, ``.spawn()``, or one item of a ``.map()``): what the client
    sent and what the "container" answered."""

    call_id: str
    input_id: str
    function_id: str
    tag: str  # "manifest" or "Writer.apply"
    params: dict[str, Any]
    options: api_pb2.FunctionOptions | None
    args_from_blob: bool
    gpus: list[str]
    output: api_pb2.FunctionGetOutputsItem | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: A generator body's items as they come (the function call's ``data_out`` stream), index 1 first.
    chunks: list[api_pb2.DataChunk] = field(default_factory=list)
    idx: int = 0  # the input's index in its function call (the n-th item of a map)
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_jwt: str = ""
    retry_count: int = 0  # 0 for the first attempt; each retry (client's or server's) adds one
    container: int | str = 0  # which class instance ran the last attempt ("f<n>" for a function's container)
    #: the :class:`~.containers.Container` of the last attempt (its Volume views, whether it was killed)
    box: Container | None = None
    parent_input_id: str = ""  # the input whose body made this call (a call from inside a body), else ""

    @property
    def status(self) -> str:
        if self.output is None:
            return "running"
        return api_pb2.GenericResult.GenericStatus.Name(self.output.result.status).removeprefix("GENERIC_STATUS_")


@dataclass
class FunctionCallRecord:
    """One function call: ``.remote()`` or ``.spawn()`` (one input), ``.map()``/``.starmap()`` (many)."""

    call_id: str
    function_id: str
    kind: str  # "UNARY" or "MAP"
    invocation: str  # "SYNC", "SYNC_LEGACY" (.remote_gen) or "ASYNC" (.spawn)
    return_exceptions: bool = False
    parent_input_id: str = ""
    inputs: list[Call] = field(default_factory=list)
    #: Every output in the order they came; FunctionGetOutputs' entry id ``"n-0"`` means "the first n seen".
    outputs: list[api_pb2.FunctionGetOutputsItem] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # replaced by a new one at each output
    cancelled: bool = False


@dataclass
class AppRecord:
    app_id: str
    description: str
    state: int
    name: str = ""
    function_ids: dict[str, str] = field(default_factory=dict)
    class_ids: dict[str, str] = field(default_factory=dict)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


def _volume_id(name: str) -> str:
    # Deterministic, so that an object hydrated in an earlier test (a module-level
    # Volume keeps its id) still resolves after a reset.
    return "vo-" + name


def _read_common(definition: Any) -> dict[str, Any]:
    """The fields that api_pb2.Function and api_pb2.FunctionData share and that we use."""
    return {
        "function_name": definition.function_name,
        "module_name": definition.module_name,
        "function_type": definition.function_type,
        "timeout": float(definition.timeout_secs) or None,
    }


def _gpus_of(request: api_pb2.FunctionCreateRequest) -> list[str]:
    if request.HasField("function"):
        functions = [request.function]
    else:
        functions = [rf.function for rf in sorted(request.function_data.ranked_functions, key=lambda r: r.rank)]
    return [f.resources.gpu_config.gpu_type for f in functions if f.resources.gpu_config.gpu_type]


def _max_concurrent_inputs(definition: Any) -> int:
    if isinstance(definition, api_pb2.FunctionData):
        definition = definition.ranked_functions[0].function if definition.ranked_functions else None
    return definition.max_concurrent_inputs if isinstance(definition, api_pb2.Function) else 1


def _volume_mounts(definition: Any) -> dict[str, str]:
    """mount path -> Volume name, from a function's definition."""
    if isinstance(definition, api_pb2.FunctionData):
        definition = definition.ranked_functions[0].function if definition.ranked_functions else None
    if not isinstance(definition, api_pb2.Function):
        return {}
    return {m.mount_path: m.volume_id.removeprefix("vo-") for m in definition.volume_mounts}


class Servicer(ModalClientBase):
    """Answers the modal client from the state of one :class:`~modal_standin.server.StandIn`."""

    def __init__(self, standin: StandIn) -> None:
        self.s = standin
        self._ids = itertools.count(1)

    # --- helpers -------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-standin{next(self._ids)}"

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        # Every RPC is logged (StandIn.rpcs) and checks the token, like Modal's API does.
        def wrap(name: str, func: Any) -> Any:
            async def handler(stream: Any) -> None:
                self.s.rpcs.append(name)
                token = self.s.token
                if token is not None:
                    md = stream.metadata or {}
                    if (
                        md.get("x-modal-token-id"),
                        md.get("x-modal-token-secret"),
                    ) != token:
                        raise GRPCError(Status.UNAUTHENTICATED, "Token is invalid (stand-in)")
                await func(stream)

            return handler

        return {
            path: grpclib.const.Handler(
                wrap(path.rsplit("/", 1)[1], h.func),
                h.cardinality,
                h.request_type,
                h.reply_type,
            )
            for path, h in super().__mapping__().items()
        }

    @staticmethod
    async def _recv(stream: Any) -> Any:
        return await stream.recv_message()

    def _function(self, function_id: str) -> FunctionRecord:
        fn = self.s.functions.get(function_id)
        if fn is None:
            raise GRPCError(Status.NOT_FOUND, f"Function {function_id} not found")
        return fn

    def _base(self, fn: FunctionRecord) -> FunctionRecord:
        return self.s.functions[fn.base_id] if fn.base_id else fn

    def _handle_metadata(self, app_id: str, definition: Any) -> api_pb2.FunctionHandleMetadata:
        md = api_pb2.FunctionHandleMetadata(
            function_name=definition.function_name,
            function_type=definition.function_type,
            app_id=app_id,
            definition_id="de-" + hashlib.sha1(definition.function_name.encode()).hexdigest()[:12],
            supported_input_formats=definition.supported_input_formats,
            supported_output_formats=definition.supported_output_formats,
            function_schema=definition.function_schema,
        )
        if hasattr(definition, "class_parameter_info"):
            md.class_parameter_info.CopyFrom(definition.class_parameter_info)
        for name, method in definition.method_definitions.items():
            md.method_handle_metadata[name].CopyFrom(
                api_pb2.FunctionHandleMetadata(
                    function_name=method.function_name,
                    function_type=method.function_type,
                    app_id=app_id,
                    is_method=True,
                    use_method_name=name,
                    function_schema=method.function_schema,
                    supported_input_formats=method.supported_input_formats,
                    supported_output_formats=method.supported_output_formats,
                )
            )
        return md

    def _deployed_app(self, app_name: str) -> AppRecord:
        app_id = self.s.deployed.get(app_name)
        if app_id is None:
            raise GRPCError(Status.NOT_FOUND, f"App '{app_name}' not found")
        return self.s.apps[app_id]

    # --- client, environment ---------------------------------------------------

    async def ClientHello(self, stream: Any) -> None:
        await self._recv(stream)
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def EnvironmentGetOrCreate(self, stream: Any) -> None:
        await self._recv(stream)
        settings = api_pb2.EnvironmentSettings(image_builder_version="2025.06", webhook_suffix="standin")
        await stream.send_message(
            api_pb2.EnvironmentGetOrCreateResponse(
                environment_id="en-standin",
                metadata=api_pb2.EnvironmentMetadata(name="main", settings=settings),
            )
        )

    # --- apps ------------------------------------------------------------------

    async def AppCreate(self, stream: Any) -> None:
        req = await self._recv(stream)
        app_id = self._new_id("ap")
        self.s.apps[app_id] = AppRecord(app_id, req.description, req.app_state)
        await stream.send_message(
            api_pb2.AppCreateResponse(
                app_id=app_id,
                app_page_url=f"https://modal.invalid/apps/{app_id}",
                app_logs_url=f"https://modal.invalid/logs/{app_id}",
            )
        )

    async def AppGetByDeploymentName(self, stream: Any) -> None:
        req = await self._recv(stream)
        await stream.send_message(api_pb2.AppGetByDeploymentNameResponse(app_id=self.s.deployed.get(req.name, "")))

    async def AppGetLayout(self, stream: Any) -> None:
        req = await self._recv(stream)
        app = self.s.apps[req.app_id]
        layout = api_pb2.AppLayout(function_ids=app.function_ids, class_ids=app.class_ids)
        await stream.send_message(api_pb2.AppGetLayoutResponse(app_layout=layout))

    async def AppHeartbeat(self, stream: Any) -> None:
        await self._recv(stream)
        await stream.send_message(Empty())

    async def AppPublish(self, stream: Any) -> None:
        req = await self._recv(stream)
        app = self.s.apps[req.app_id]
        app.state = req.app_state
        app.function_ids = dict(req.function_ids)
        app.class_ids = dict(req.class_ids)
        if req.name:
            app.name = req.name
        if req.app_state == api_pb2.APP_STATE_DEPLOYED and req.name:
            self.s.deployed[req.name] = app.app_id
        await stream.send_message(
            api_pb2.AppPublishResponse(url=f"https://modal.invalid/apps/{app.app_id}", deployed_at=time.time())
        )

    async def AppClientDisconnect(self, stream: Any) -> None:
        req = await self._recv(stream)
        app = self.s.apps.get(req.app_id)
        if app is not None:
            self.s.disconnects.append((req.app_id, req.reason, req.exception))
            if app.state != api_pb2.APP_STATE_DEPLOYED:
                app.state = api_pb2.APP_STATE_STOPPED
                app.stopped.set()
        await stream.send_message(Empty())

    async def AppGetLogs(self, stream: Any) -> None:
        # Only `modal.enable_output()` asks for logs. There are none; say "done" once the app stops.
        req = await self._recv(stream)
        app = self.s.apps.get(req.app_id)
        if app is not None:
            try:
                await asyncio.wait_for(app.stopped.wait(), timeout=min(req.timeout, _OUTPUTS_WAIT_CAP))
            except asyncio.TimeoutError:
                return
            await stream.send_message(api_pb2.TaskLogsBatch(app_done=True))

    # --- images and mounts: every image is "already built" unless builds are on --

    async def ImageGetOrCreate(self, stream: Any) -> None:
        req = await self._recv(stream)
        image_id = "im-" + hashlib.sha1(req.image.SerializeToString(deterministic=True)).hexdigest()[:16]
        self.s.images.append(req)
        if self.s.builds.needs_build(image_id, req):  # not built yet: the client joins the build
            await stream.send_message(api_pb2.ImageGetOrCreateResponse(image_id=image_id))
            return
        await stream.send_message(
            api_pb2.ImageGetOrCreateResponse(
                image_id=image_id,
                result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
                metadata=image_metadata(req),
            )
        )

    async def ImageJoinStreaming(self, stream: Any) -> None:
        # The build's log in chunks (each with an entry id, so a client that joins again resumes), then its result.
        req = await self._recv(stream)
        play = self.s.builds.play(req.image_id)
        skip = int(req.last_entry_id or 0)
        for i, chunk in enumerate(play.chunks, start=1):
            if i <= skip:
                continue
            log = api_pb2.TaskLogs(data=chunk, file_descriptor=api_pb2.FILE_DESCRIPTOR_STDOUT)
            await stream.send_message(api_pb2.ImageJoinStreamingResponse(task_logs=[log], entry_id=str(i)))
        await stream.send_message(
            api_pb2.ImageJoinStreamingResponse(result=play.result, metadata=play.metadata, eof=True)
        )

    async def MountBatchedCheckExistence(self, stream: Any) -> None:
        await self._recv(stream)
        await stream.send_message(api_pb2.MountBatchedCheckExistenceResponse())  # nothing missing

    async def MountPutFile(self, stream: Any) -> None:
        # Content by sha256, for mounts and Volume v1 uploads: "exists" only once the bytes are here.
        req = await self._recv(stream)
        if req.HasField("data") or req.data_blob_id:
            data = req.data if req.HasField("data") else self.s.blobs[req.data_blob_id]
            if hashlib.sha256(data).hexdigest() != req.sha256_hex:
                raise GRPCError(Status.INVALID_ARGUMENT, "file content does not match its sha256")
            self.s.mount_files[req.sha256_hex] = data
        await stream.send_message(api_pb2.MountPutFileResponse(exists=req.sha256_hex in self.s.mount_files))

    async def MountGetOrCreate(self, stream: Any) -> None:
        await self._recv(stream)
        await stream.send_message(
            api_pb2.MountGetOrCreateResponse(
                mount_id=self._new_id("mo"),
                handle_metadata=api_pb2.MountHandleMetadata(),
            )
        )

    # --- functions and classes -------------------------------------------------

    async def FunctionPrecreate(self, stream: Any) -> None:
        req = await self._recv(stream)
        function_id = req.existing_function_id or self._new_id("fu")
        md = self._handle_metadata(req.app_id, req)
        self.s.functions[function_id] = FunctionRecord(function_id, req.app_id, req.function_name, metadata=md)
        await stream.send_message(api_pb2.FunctionPrecreateResponse(function_id=function_id, handle_metadata=md))

    async def FunctionCreate(self, stream: Any) -> None:
        req = await self._recv(stream)
        if req.HasField("function"):
            definition = req.function
            function_data = api_pb2.FunctionData(
                ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=req.function)]
            )
            function = req.function
        else:
            definition = req.function_data
            function_data = req.function_data
            function = req.function_data.ranked_functions[0].function
        common = _read_common(definition)
        function_id = req.existing_function_id or self._new_id("fu")
        md = self._handle_metadata(req.app_id, definition)
        self.s.functions[function_id] = FunctionRecord(
            function_id,
            req.app_id,
            common["function_name"],
            module_name=common["module_name"],
            timeout=common["timeout"],
            gpus=_gpus_of(req),
            metadata=md,
            definition=definition,
        )
        await stream.send_message(
            api_pb2.FunctionCreateResponse(
                function_id=function_id,
                function=function,
                function_data=function_data,
                handle_metadata=md,
            )
        )

    async def ClassCreate(self, stream: Any) -> None:
        req = await self._recv(stream)
        class_id = req.existing_class_id or self._new_id("cs")
        await stream.send_message(
            api_pb2.ClassCreateResponse(class_id=class_id, handle_metadata=api_pb2.ClassHandleMetadata())
        )

    def _deployed_object(self, req: Any, kind: str) -> str:
        """The id of the class or function ``req.object_tag`` of a deployed app; NOT_FOUND as Modal answers."""
        app = self._deployed_app(req.app_name)
        ids = app.class_ids if kind == "Class" else app.function_ids
        object_id = ids.get(req.object_tag)
        if object_id is None:
            raise GRPCError(Status.NOT_FOUND, f"{kind} '{req.object_tag}' not found in app '{req.app_name}'")
        return object_id

    async def ClassGet(self, stream: Any) -> None:
        req = await self._recv(stream)
        class_id = self._deployed_object(req, "Class")
        await stream.send_message(
            api_pb2.ClassGetResponse(class_id=class_id, handle_metadata=api_pb2.ClassHandleMetadata())
        )

    async def FunctionGet(self, stream: Any) -> None:
        req = await self._recv(stream)
        function_id = self._deployed_object(req, "Function")
        fn = self._function(function_id)
        data = fn.definition if isinstance(fn.definition, api_pb2.FunctionData) else None
        if data is None:
            data = api_pb2.FunctionData(
                ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=fn.definition)]
            )
        await stream.send_message(
            api_pb2.FunctionGetResponse(function_id=function_id, handle_metadata=fn.metadata, function=data)
        )

    async def FunctionBindParams(self, stream: Any) -> None:
        req = await self._recv(stream)
        base = self._function(req.function_id)
        key = (
            req.function_id.encode()
            + req.serialized_params
            + req.function_options.SerializeToString(deterministic=True)
        )
        bound_id = "fu-bound-" + hashlib.sha1(key).hexdigest()[:16]
        if bound_id not in self.s.functions:
            info = base.metadata.class_parameter_info
            if info.format == api_pb2.ClassParameterInfo.PARAM_SERIALIZATION_FORMAT_PROTO:
                params = deserialize_proto_params(req.serialized_params)
            elif req.serialized_params:
                args, kwargs = deserialize(req.serialized_params, None)
                if args:
                    raise GRPCError(
                        Status.INVALID_ARGUMENT,
                        "the stand-in takes keyword parameters only",
                    )
                params = dict(kwargs)
            else:
                params = {}
            options = api_pb2.FunctionOptions()
            options.CopyFrom(req.function_options)
            gpus = base.gpus
            if options.HasField("resources") and options.resources.gpu_config.gpu_type:
                gpus = [options.resources.gpu_config.gpu_type]
            self.s.functions[bound_id] = FunctionRecord(
                bound_id,
                base.app_id,
                base.tag,
                module_name=base.module_name,
                timeout=float(options.timeout_secs) if options.timeout_secs else base.timeout,
                gpus=gpus,
                metadata=base.metadata,
                definition=base.definition,
                base_id=base.function_id,
                params=params,
                options=options if options.ByteSize() else None,
            )
        await stream.send_message(
            api_pb2.FunctionBindParamsResponse(bound_function_id=bound_id, handle_metadata=base.metadata)
        )

    # --- calls -----------------------------------------------------------------
    #
    # A function call holds one input (.remote(), .spawn()) or many (.map(), .starmap():
    # FunctionMap opens the call, FunctionPutInputs adds inputs in batches, FunctionGetOutputs
    # streams the outputs as they come). Each input runs in its own thread as it arrives, so
    # the inputs of a map run concurrently.

    def _function_call(self, function_call_id: str) -> FunctionCallRecord:
        record = self.s.function_calls.get(function_call_id)
        if record is None:
            raise GRPCError(Status.NOT_FOUND, f"Function call {function_call_id} not found")
        return record

    def _check_app_running(self, fn: FunctionRecord) -> None:
        app = self.s.apps.get(fn.app_id)
        if app is not None and app.stopped.is_set():
            raise GRPCError(Status.FAILED_PRECONDITION, f"App {app.app_id} is stopped")

    @staticmethod
    def _retry_policy(fn: FunctionRecord) -> api_pb2.FunctionRetryPolicy:
        """The function's retry policy: ``with_options(retries=...)``, else its definition's ``retries=``."""
        if fn.options is not None and fn.options.HasField("retry_policy"):
            return fn.options.retry_policy
        definition = fn.definition
        if isinstance(definition, api_pb2.FunctionData):
            definition = definition.ranked_functions[0].function if definition.ranked_functions else None
        if isinstance(definition, api_pb2.Function) and definition.HasField("retry_policy"):
            return definition.retry_policy
        return api_pb2.FunctionRetryPolicy()

    def _add_input(
        self, record: FunctionCallRecord, fn: FunctionRecord, item: api_pb2.FunctionPutInputsItem
    ) -> api_pb2.FunctionPutInputsResponseItem:
        input_id = self._new_id("in")
        tag = fn.tag[:-2] + "." + item.input.method_name if fn.is_class else fn.tag
        jwt = DecodedJwt.encode_without_signature(
            {"input_id": input_id, "idx": item.idx, "function_call_id": record.call_id}
        )
        call = Call(
            record.call_id,
            input_id,
            fn.function_id,
            tag,
            dict(fn.params),
            fn.options,
            args_from_blob=bool(item.input.args_blob_id),
            gpus=list(fn.gpus),
            idx=item.idx,
            input_jwt=jwt,
            parent_input_id=record.parent_input_id,
        )
        record.inputs.append(call)
        self.s.calls.append(call)
        self.s.calls_by_id.setdefault(record.call_id, call)
        self.s.inputs_by_jwt[jwt] = call
        self.s.background(self._execute(record, call, fn, item.input))
        return api_pb2.FunctionPutInputsResponseItem(idx=item.idx, input_id=input_id, input_jwt=jwt)

    async def FunctionMap(self, stream: Any) -> None:
        req = await self._recv(stream)
        fn = self._function(req.function_id)
        self._check_app_running(fn)
        call_id = self._new_id("fc")
        record = FunctionCallRecord(
            call_id,
            fn.function_id,
            kind=api_pb2.FunctionCallType.Name(req.function_call_type).removeprefix("FUNCTION_CALL_TYPE_"),
            invocation=api_pb2.FunctionCallInvocationType.Name(req.function_call_invocation_type).removeprefix(
                "FUNCTION_CALL_INVOCATION_TYPE_"
            ),
            return_exceptions=req.return_exceptions,
            parent_input_id=req.parent_input_id,
        )
        self.s.function_calls[call_id] = record
        items = [self._add_input(record, fn, item) for item in req.pipelined_inputs]
        await stream.send_message(
            api_pb2.FunctionMapResponse(
                function_call_id=call_id,
                pipelined_inputs=items,
                function_call_jwt=DecodedJwt.encode_without_signature({"function_call_id": call_id}),
                retry_policy=self._retry_policy(fn),
                # The client retries failed inputs of .remote() and .map() itself (FunctionRetryInputs);
                # the stand-in retries those of .spawn() (see _execute).
                sync_client_retries_enabled=True,
                max_inputs_outstanding=1000,
            )
        )

    async def FunctionPutInputs(self, stream: Any) -> None:
        req = await self._recv(stream)
        fn = self._function(req.function_id)
        self._check_app_running(fn)
        record = self._function_call(req.function_call_id)
        items = [self._add_input(record, fn, item) for item in req.inputs]
        await stream.send_message(api_pb2.FunctionPutInputsResponse(inputs=items))

    async def FunctionFinishInputs(self, stream: Any) -> None:
        # .spawn_map(): all inputs are in.
        req = await self._recv(stream)
        self._function_call(req.function_call_id)
        await stream.send_message(Empty())

    async def FunctionCallFromId(self, stream: Any) -> None:
        req = await self._recv(stream)
        record = self._function_call(req.function_call_id)
        await stream.send_message(
            api_pb2.FunctionCallFromIdResponse(function_call_id=record.call_id, num_inputs=len(record.inputs))
        )

    async def FunctionRetryInputs(self, stream: Any) -> None:
        """The client retries failed inputs (a function with ``retries=``): each runs again, its
        ``retry_count`` the client's."""
        req = await self._recv(stream)
        jwts = []
        for item in req.inputs:
            call = self.s.inputs_by_jwt.get(item.input_jwt)
            if call is None:
                raise GRPCError(Status.NOT_FOUND, "input not found (stand-in)")
            record = self._function_call(call.call_id)
            call.retry_count = item.retry_count
            call.output = None
            call.done = asyncio.Event()
            self.s.background(self._execute(record, call, self._function(call.function_id), item.input))
            jwts.append(call.input_jwt)
        await stream.send_message(api_pb2.FunctionRetryInputsResponse(input_jwts=jwts))

    async def FunctionCallCancel(self, stream: Any) -> None:
        """``FunctionCall.cancel()``: unfinished inputs answer TERMINATED (their threads run on)."""
        req = await self._recv(stream)
        record = self._function_call(req.function_call_id)
        record.cancelled = True
        for call in record.inputs:
            if call.output is None:
                result = api_pb2.GenericResult(
                    status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED,
                    exception="Function call was cancelled (stand-in)",
                )
                self._finish(record, call, result, _PICKLE, time.time())
        await stream.send_message(Empty())

    async def FunctionGetOutputs(self, stream: Any) -> None:
        """Outputs of a function call: with ``start_idx``/``end_idx`` (``.remote()``, ``FunctionCall.get()``)
        those of the inputs in that range; else (``.map()``) those that came after ``last_entry_id``. Waits up
        to ``timeout`` for one."""
        req = await self._recv(stream)
        record = self._function_call(req.function_call_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, min(req.timeout, _OUTPUTS_WAIT_CAP))
        while True:
            changed = record.changed
            if req.HasField("start_idx"):
                end = req.end_idx if req.HasField("end_idx") else req.start_idx
                outputs = [c.output for c in record.inputs if c.output is not None and req.start_idx <= c.idx <= end]
                last_entry_id = req.last_entry_id
            else:
                seen = int((req.last_entry_id or "0-0").split("-", 1)[0])
                outputs = record.outputs[seen:]
                last_entry_id = f"{len(record.outputs)}-0"
            remaining = deadline - loop.time()
            if outputs or remaining <= 0:
                break
            try:
                await asyncio.wait_for(changed.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass
        unfinished = sum(1 for c in record.inputs if c.output is None)
        await stream.send_message(
            api_pb2.FunctionGetOutputsResponse(
                outputs=outputs, last_entry_id=last_entry_id, num_unfinished_inputs=unfinished
            )
        )

    def _finish(
        self, record: FunctionCallRecord, call: Call, result: api_pb2.GenericResult, data_format: int, started: float
    ) -> None:
        call.output = api_pb2.FunctionGetOutputsItem(
            result=result,
            idx=call.idx,
            input_id=call.input_id,
            data_format=data_format,
            task_id="ta-standin",
            input_started_at=started,
            output_created_at=time.time(),
            retry_count=call.retry_count,
        )
        record.outputs.append(call.output)
        call.done.set()
        changed, record.changed = record.changed, asyncio.Event()
        changed.set()

    async def _execute(
        self, record: FunctionCallRecord, call: Call, fn: FunctionRecord, inp: api_pb2.FunctionInput
    ) -> None:
        base = self._base(fn)
        policy = self._retry_policy(fn)
        while True:
            started = time.time()
            result, data_format = await self._attempt(call, fn, base, inp)
            if record.cancelled:
                return  # FunctionCallCancel answered for it
            # Modal retries failed inputs of .spawn() server-side; the client retries the others.
            if (
                result.status != api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
                and record.invocation == "ASYNC"
                and call.retry_count < policy.retries
            ):
                call.retry_count += 1
                continue
            self._finish(record, call, result, data_format, started)
            return

    async def _attempt(
        self, call: Call, fn: FunctionRecord, base: FunctionRecord, inp: api_pb2.FunctionInput
    ) -> tuple[api_pb2.GenericResult, int]:
        """Run one attempt of an input: its result, and the data format of the output."""
        data_format = inp.data_format or _PICKLE
        timeout = self.s.timeouts.get(call.tag, self.s.timeouts.get(base.tag, fn.timeout))
        injected: Any = None
        try:
            args_bytes = (
                inp.args if inp.HasField("args") else (self.s.blobs[inp.args_blob_id] if inp.args_blob_id else b"")
            )
            args, kwargs = deserialize_data_format(args_bytes, data_format, None) if args_bytes else ((), {})
            call.args, call.kwargs = tuple(args), dict(kwargs)
            injected = self.s.take_injection(call.tag, base.tag, call.idx, call.args, call.kwargs)
        except Exception as exc:  # arguments that do not unpickle fail "in the container"
            injected = exc
        if injected is TIMEOUT:
            return self._timeout_result(call.tag, timeout), data_format
        if isinstance(injected, Kill) and injected.at == "timeout":
            timeout = injected.seconds
        future: concurrent.futures.Future = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._run_body,
            args=(future, call, fn, base, inp.method_name, data_format, injected),
            name=f"standin-{call.tag}",
            daemon=True,
        )
        thread.start()
        try:
            outcome = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout=timeout)
        except asyncio.TimeoutError:
            # Like Modal, answer TIMEOUT and kill the container: its threads get ContainerKilled, its later
            # Volume commits and Dict calls are refused (children it started run on, see the docs).
            if call.box is not None:
                call.box.die(f"timed out after {timeout} s")
            return self._timeout_result(call.tag, timeout), data_format
        if call.box is not None and call.box.dead:
            return api_pb2.GenericResult(
                status=api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE,
                exception=f"container {call.box.id} of {call.tag} was killed ({call.box.why}) (stand-in)",
            ), data_format
        if isinstance(outcome[1], api_pb2.GeneratorDone):
            # A generator body: the items went out on data_out; the output says how many.
            data_format = _GENERATOR_DONE
        return self._result(call, *outcome, data_format), data_format

    def _run_body(
        self,
        future: concurrent.futures.Future,
        call: Call,
        fn: FunctionRecord,
        base: FunctionRecord,
        method_name: str,
        data_format: int,
        injected: BaseException | None,
    ) -> None:
        """In the "container" thread: call the body via .local(), report (ok, value, traceback).

        The body sees ``modal.current_input_id()`` and ``modal.current_function_call_id()`` as in a
        container. A class takes an idle instance of its variant (a warm container) or makes one
        (a cold start: ``@enter`` runs), so concurrent inputs of one variant get one instance each."""
        reset_context = _set_current_context_ids([call.input_id], [call.call_id], [call.input_jwt])
        box = None
        try:
            if injected is not None and not isinstance(injected, Kill):
                raise injected
            module = sys.modules.get(base.module_name) or importlib.import_module(base.module_name)
            box = self._container_for(call, fn, base)
            if isinstance(injected, Kill):
                box.kill = injected
            with running_in(box):
                if base.is_class:
                    with box.enter_lock:  # concurrent inputs of a new container: @enter runs once, before any input
                        if box.obj is None:
                            obj = getattr(module, base.tag[:-2])(**fn.params)
                            # modal's .local() enters the object unguarded (cls.py, _Obj._enter): concurrent first
                            # inputs would each run @enter. Modal runs it once when the container starts.
                            obj._enter()
                            box.obj = obj
                    value = getattr(box.obj, method_name).local(*call.args, **call.kwargs)
                else:
                    value = getattr(module, base.tag).local(*call.args, **call.kwargs)
                if inspect.isgenerator(value):
                    value = self._drain(call, value, data_format)
        except BaseException as exc:
            outcome = (False, exc, "".join(traceback.format_exception(exc)))
        else:
            outcome = (True, value, "")
        finally:
            reset_context()
            if box is not None:
                with self.s.lock:
                    box.busy -= 1  # room again before its output is out
                    if not box.busy:
                        box.kill = None
        future.set_result(outcome)

    def _container_for(self, call: Call, fn: FunctionRecord, base: FunctionRecord) -> Container:
        """A container of ``fn`` with room for one more input (warm: its views as it left them; up to
        ``@modal.concurrent(max_inputs=n)`` inputs at once, else one), or a new one (its views taken now)."""
        limit = max(1, _max_concurrent_inputs(base.definition))
        with self.s.lock:
            box = next((b for b in reversed(self.s.all_containers.values())
                        if b.function_id == fn.function_id and not b.dead and b.busy < limit), None)
            if box is None:
                if base.is_class:
                    self.s.containers += 1
                    box_id: int | str = self.s.containers
                else:
                    self.s.function_containers += 1
                    box_id = f"f{self.s.function_containers}"
                box = Container(box_id, fn.function_id, _volume_mounts(base.definition))
                self.s.all_containers[box_id] = box
            box.busy += 1
            if not box.views:
                for name in sorted(set(box.mounts.values())):
                    box.views[name] = View(self.s.volume_dir(name), self.s.view_dir(box.id, name), self.s.volume_lock)
        call.container, call.box = box.id, box
        return box

    def _drain(self, call: Call, items: Any, data_format: int) -> api_pb2.GeneratorDone:
        """Run a generator body to its end, each item a ``DataChunk`` of the call's ``data_out`` stream (as Modal's
        container runtime sends them); the body's return is ``GeneratorDone`` with the count."""
        for item in items:
            data = serialize_data_format(item, data_format)
            call.chunks.append(api_pb2.DataChunk(index=len(call.chunks) + 1, data_format=data_format, **self._data(data)))
        return api_pb2.GeneratorDone(items_total=len(call.chunks))

    async def FunctionCallGetDataOut(self, stream: Any) -> None:
        """The ``data_out`` stream of a generator call: the items after ``last_index``, as they come, until the
        body ends (the client reconnects with its last index if the stream ends early)."""
        req = await self._recv(stream)
        call = self.s.calls_by_id.get(req.function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, f"Function call {req.function_call_id} not found")
        sent = req.last_index
        while True:
            finished = call.done.is_set()  # read before the chunks: none can follow once it is set
            while sent < len(call.chunks):
                await stream.send_message(call.chunks[sent])
                sent += 1
            if finished:
                return
            try:
                await asyncio.wait_for(call.done.wait(), timeout=_DATA_POLL)
            except asyncio.TimeoutError:
                pass

    def _result(self, call: Call, ok: bool, value: Any, tb_text: str, data_format: int) -> api_pb2.GenericResult:
        if ok:
            try:
                data = serialize_data_format(value, data_format)
            except Exception as exc:
                ok, value, tb_text = (
                    False,
                    exc,
                    "".join(traceback.format_exception(exc)),
                )
            else:
                return api_pb2.GenericResult(
                    status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS,
                    **self._data(data),
                )
        serialized_tb, tb_line_cache = pickle_traceback(value, "ta-standin")
        return api_pb2.GenericResult(
            status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
            exception=repr(value),
            traceback=tb_text,
            serialized_tb=serialized_tb,
            tb_line_cache=tb_line_cache,
            **self._data(pickle_exception(value)),
        )

    def _timeout_result(self, tag: str, timeout: float | None) -> api_pb2.GenericResult:
        return api_pb2.GenericResult(
            status=api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT,
            exception=f"Function '{tag}' timed out after {timeout} seconds (stand-in)",
        )

    def _data(self, data: bytes) -> dict[str, Any]:
        if len(data) > MAX_OBJECT_SIZE_BYTES:
            blob_id = self._new_id("bl")
            self.s.blobs[blob_id] = data
            self.s.blob_outputs.append(blob_id)
            return {"data_blob_id": blob_id}
        return {"data": data}

    # --- blobs (the bytes travel over the stand-in's HTTP endpoint) -------------

    async def BlobCreate(self, stream: Any) -> None:
        await self._recv(stream)
        blob_id = self._new_id("bl")
        url = f"{self.s.http_url}/blob/{blob_id}"
        await stream.send_message(
            api_pb2.BlobCreateResponse(
                blob_id=blob_id,
                upload_url=url,
                blob_ids=[blob_id],
                upload_urls=api_pb2.UploadUrlList(items=[url]),
            )
        )

    async def BlobGet(self, stream: Any) -> None:
        req = await self._recv(stream)
        if req.blob_id not in self.s.blobs:
            raise GRPCError(Status.NOT_FOUND, f"Blob {req.blob_id} not found")
        await stream.send_message(api_pb2.BlobGetResponse(download_url=f"{self.s.http_url}/blob/{req.blob_id}"))

    # --- volumes (VolumeFS v2; the files live in a directory per Volume) -------

    def _volume_dir(self, volume_id: str) -> Path:
        if not volume_id.startswith("vo-"):
            raise GRPCError(Status.NOT_FOUND, f"Volume {volume_id} not found")
        path = self.s.volume_dir(volume_id[3:])
        if not path.is_dir():
            raise GRPCError(Status.NOT_FOUND, f"Volume {volume_id[3:]!r} not found")
        return path

    @staticmethod
    def _inside(root: Path, path: str) -> Path:
        rel = PurePosixPath("/" + path.lstrip("/"))
        target = (root / str(rel).lstrip("/")).resolve()
        if target != root.resolve() and root.resolve() not in target.parents:
            raise GRPCError(Status.INVALID_ARGUMENT, f"path {path!r} leaves the Volume")
        return target

    async def VolumeGetOrCreate(self, stream: Any) -> None:
        req = await self._recv(stream)
        if req.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL or not req.deployment_name:
            raise GRPCError(Status.UNIMPLEMENTED, "the stand-in has named Volumes only")
        path = self.s.volume_dir(req.deployment_name)
        if not path.is_dir():
            if req.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"Volume '{req.deployment_name}' not found")
            path.mkdir(parents=True)
        version = api_pb2.VOLUME_FS_VERSION_V1 if self.s.volume_version == 1 else api_pb2.VOLUME_FS_VERSION_V2
        md = api_pb2.VolumeMetadata(version=version, name=req.deployment_name)
        await stream.send_message(
            api_pb2.VolumeGetOrCreateResponse(
                volume_id=_volume_id(req.deployment_name),
                version=version,
                metadata=md,
            )
        )

    async def VolumeGetFile2(self, stream: Any) -> None:
        req = await self._recv(stream)
        target = self._inside(self._volume_dir(req.volume_id), req.path)
        if not target.is_file():
            raise GRPCError(Status.NOT_FOUND, f"No such file: {req.path}")
        size = target.stat().st_size
        start = min(req.start, size)
        length = size - start if not req.len else min(req.len, size - start)
        urls = []
        first, last = (
            start // BLOCK_SIZE,
            (start + length - 1) // BLOCK_SIZE if length else start // BLOCK_SIZE - 1,
        )
        for index in range(first, last + 1):
            token = self._new_id("rd")
            lo = max(start, index * BLOCK_SIZE)
            hi = min(start + length, (index + 1) * BLOCK_SIZE)
            self.s.reads[token] = (target, lo, hi - lo)
            urls.append(f"{self.s.http_url}/read/{token}")
        await stream.send_message(api_pb2.VolumeGetFile2Response(get_urls=urls, size=size, start=start, len=length))

    def _list_entries(self, volume_id: str, path: str, recursive: bool) -> list[api_pb2.FileEntry]:
        root = self._volume_dir(volume_id)
        target = self._inside(root, path)
        if not target.exists():
            raise GRPCError(Status.NOT_FOUND, f"No such file or directory: {path}")
        if target.is_file():
            found = [target]
        else:
            found = sorted(target.rglob("*") if recursive else target.iterdir())
        entries = []
        for p in found:
            st = p.stat()
            kind = api_pb2.FileEntry.FileType.DIRECTORY if p.is_dir() else api_pb2.FileEntry.FileType.FILE
            entries.append(
                api_pb2.FileEntry(
                    path=p.relative_to(root).as_posix(),
                    type=kind,
                    mtime=int(st.st_mtime),
                    size=st.st_size if p.is_file() else 0,
                )
            )
        return entries

    async def _send_listing(self, stream: Any, response: Any) -> None:
        """A listing streamed as Modal's server does: 100 entries a message, one empty message for none."""
        req = await self._recv(stream)
        entries = self._list_entries(req.volume_id, req.path, req.recursive)
        for i in range(0, len(entries), 100):
            await stream.send_message(response(entries=entries[i : i + 100]))
        if not entries:
            await stream.send_message(response())

    async def VolumeListFiles2(self, stream: Any) -> None:
        await self._send_listing(stream, api_pb2.VolumeListFiles2Response)

    @staticmethod
    def _write_file(target: Path, data: bytes, mode: int) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".standin-tmp")
        tmp.write_bytes(data)
        if mode:
            os.chmod(tmp, mode & 0o777)
        os.replace(tmp, target)

    def _remove(self, volume_id: str, path: str, recursive: bool) -> None:
        target = self._inside(self._volume_dir(volume_id), path)
        if not target.exists():
            raise GRPCError(Status.NOT_FOUND, f"No such file or directory: {path}")
        if target.is_dir():
            if not recursive:
                raise GRPCError(Status.INVALID_ARGUMENT, f"{path} is a directory; pass recursive=True")
            shutil.rmtree(target)
        else:
            target.unlink()

    async def VolumePutFiles2(self, stream: Any) -> None:
        req = await self._recv(stream)
        root = self._volume_dir(req.volume_id)
        missing = []
        for fi, f in enumerate(req.files):
            for bi, block in enumerate(f.blocks):
                if block.contents_sha256 not in self.s.blocks:
                    url = f"{self.s.http_url}/block/{block.contents_sha256.hex()}"
                    missing.append(
                        api_pb2.VolumePutFiles2Response.MissingBlock(file_index=fi, block_index=bi, put_url=url)
                    )
        if missing:
            await stream.send_message(api_pb2.VolumePutFiles2Response(missing_blocks=missing))
            return
        targets = [(f, self._inside(root, f.path)) for f in req.files]
        if req.disallow_overwrite_existing_files:
            for f, target in targets:
                if target.exists():
                    raise GRPCError(Status.ALREADY_EXISTS, f"{f.path}: already exists")
        for f, target in targets:
            data = b"".join(self.s.blocks[b.contents_sha256] for b in f.blocks)[: f.size]
            self._write_file(target, data.ljust(f.size, b"\0"), f.mode)
        await stream.send_message(api_pb2.VolumePutFiles2Response())

    async def VolumeRemoveFile2(self, stream: Any) -> None:
        req = await self._recv(stream)
        self._remove(req.volume_id, req.path, req.recursive)
        await stream.send_message(Empty())

    # --- a container's view: reload and commit (see containers.py for where the semantics come from) ----

    def _caller_view(self, volume_id: str, what: str) -> tuple[Container, View]:
        box = _containers.caller[0]
        if box is None:
            raise GRPCError(Status.FAILED_PRECONDITION, f"Volume.{what}() must be called inside a container (stand-in)")
        view = box.views.get(volume_id.removeprefix("vo-"))
        if view is None:
            raise GRPCError(Status.FAILED_PRECONDITION, f"container {box.id} does not mount Volume {volume_id}")
        return box, view

    async def VolumeReload(self, stream: Any) -> None:
        req = await self._recv(stream)
        box, view = self._caller_view(req.volume_id, "reload")
        if box.kill is not None and box.kill.at == "reload":
            box.die("killed at its Volume reload (injected)")
            await stream.send_message(Empty())
            return
        busy = view.open_files()
        if busy:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"there are open files preventing the operation (stand-in: container {box.id} has {busy[0]!r} open)",
            )
        view.publish()  # "uncommitted changes [...] may implicitly be committed when reloading"
        view.take()
        self.s.volume_events.append(("reload", box.id, req.volume_id))
        await stream.send_message(Empty())

    async def VolumeCommit(self, stream: Any) -> None:
        req = await self._recv(stream)
        box, view = self._caller_view(req.volume_id, "commit")
        kill = box.kill
        if kill is not None and kill.at in ("commit", "mid-commit"):
            published = view.publish(limit=len(view.changes()) // 2) if kill.at == "mid-commit" else 0
            box.die(f"killed at its Volume commit, {published} change(s) published (injected)")
        else:
            view.publish()
            self.s.volume_events.append(("commit", box.id, req.volume_id))
        await stream.send_message(api_pb2.VolumeCommitResponse(skip_reload=True))

    # --- Volume v1 (VolumeGetOrCreate answers StandIn.volume_version) ----------------------

    async def VolumeListFiles(self, stream: Any) -> None:
        await self._send_listing(stream, api_pb2.VolumeListFilesResponse)

    async def VolumePutFiles(self, stream: Any) -> None:
        req = await self._recv(stream)
        root = self._volume_dir(req.volume_id)
        targets = [(f, self._inside(root, f.filename)) for f in req.files]
        for f, target in targets:
            if f.sha256_hex not in self.s.mount_files:
                raise GRPCError(Status.FAILED_PRECONDITION, f"{f.filename}: content {f.sha256_hex} was never uploaded")
            if req.disallow_overwrite_existing_files and target.exists():
                raise GRPCError(Status.ALREADY_EXISTS, f"{f.filename}: already exists")
        for f, target in targets:
            self._write_file(target, self.s.mount_files[f.sha256_hex], f.mode)
        await stream.send_message(Empty())

    async def VolumeRemoveFile(self, stream: Any) -> None:
        req = await self._recv(stream)
        self._remove(req.volume_id, req.path, req.recursive)
        await stream.send_message(Empty())

    # --- Dicts (modal/dict.py: DictGetOrCreate, DictUpdate with if_not_exists, DictGet, DictPop, ...) ----
    # Entries never expire here (Modal: after 7 days of inactivity). Keys and values are the client's bytes.

    def _dict(self, dict_id: str) -> dict[bytes, bytes]:
        if not dict_id.startswith("di-"):
            raise GRPCError(Status.NOT_FOUND, f"Dict {dict_id} not found")
        return self.s.dicts.setdefault(dict_id[3:], {})

    async def DictGetOrCreate(self, stream: Any) -> None:
        req = await self._recv(stream)
        if req.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL or not req.deployment_name:
            raise GRPCError(Status.UNIMPLEMENTED, "the stand-in has named Dicts only")
        if req.deployment_name not in self.s.dicts:
            if req.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"Dict '{req.deployment_name}' not found")
            self.s.dicts[req.deployment_name] = {}
        await stream.send_message(
            api_pb2.DictGetOrCreateResponse(
                dict_id="di-" + req.deployment_name, metadata=api_pb2.DictMetadata(name=req.deployment_name)
            )
        )

    async def DictHeartbeat(self, stream: Any) -> None:
        await self._recv(stream)
        await stream.send_message(Empty())

    async def DictUpdate(self, stream: Any) -> None:
        req = await self._recv(stream)
        entries = self._dict(req.dict_id)
        created = True
        with self.s.lock:
            for entry in req.updates:
                if req.if_not_exists and entry.key in entries:
                    created = False
                    continue
                entries[entry.key] = entry.value
        await stream.send_message(api_pb2.DictUpdateResponse(created=created))

    async def DictGet(self, stream: Any) -> None:
        req = await self._recv(stream)
        value = self._dict(req.dict_id).get(req.key)
        await stream.send_message(api_pb2.DictGetResponse(found=value is not None, value=value or b""))

    async def DictContains(self, stream: Any) -> None:
        req = await self._recv(stream)
        await stream.send_message(api_pb2.DictContainsResponse(found=req.key in self._dict(req.dict_id)))

    async def DictLen(self, stream: Any) -> None:
        req = await self._recv(stream)
        await stream.send_message(api_pb2.DictLenResponse(len=len(self._dict(req.dict_id))))

    async def DictPop(self, stream: Any) -> None:
        req = await self._recv(stream)
        with self.s.lock:
            value = self._dict(req.dict_id).pop(req.key, None)
        await stream.send_message(api_pb2.DictPopResponse(found=value is not None, value=value or b""))

    async def DictClear(self, stream: Any) -> None:
        req = await self._recv(stream)
        self._dict(req.dict_id).clear()
        await stream.send_message(Empty())


def _unimplemented(name: str):
    async def handler(self: Servicer, stream: Any) -> None:
        self.s.unimplemented.append(name)
        raise GRPCError(Status.UNIMPLEMENTED, f"the Modal stand-in does not implement {name}")

    handler.__name__ = name
    return handler


for _name in sorted(ModalClientBase.__abstractmethods__):
    if _name not in Servicer.__dict__:
        setattr(Servicer, _name, _unimplemented(_name))
Servicer.__abstractmethods__ = frozenset()

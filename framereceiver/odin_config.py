"""odin-data frameReceiver configuration keys, mapped onto framechain's receiver.

``translate(params, current_source)`` takes a configure message written for odin's C++
frameReceiver (``dummyUDP-fr.json``: ``decoder_type``, ``rx_ports``, ``decoder_config``,
``frame_ready_endpoint`` ...) and returns framechain's own keys plus the endpoints to
rebind. Keys with a framechain meaning are mapped; keys that mean nothing here are
refused with a sentence that says why.

One addition odin does not need: odin's receiver copies packets without knowing the
image, so its config has no frame size; framechain's ``udp`` source places pixels and
needs ``decoder_config/shape`` (``[height, width]``, odin keeps it in the processor's
DummyUDPProcessPlugin ``{width, height}``) and optionally ``decoder_config/dtype``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from framechain.ipc.errors import ConfigError

__all__ = ["ODIN_RECEIVER_KEYS", "OdinReceiverConfig", "translate"]

#: odin keys framechain takes (beside shared_buffer_name and max_buffer_mem, which are its own too)
ODIN_RECEIVER_KEYS = ("frame_ready_endpoint", "frame_release_endpoint", "ctrl_endpoint", "decoder_type",
                      "decoder_path", "decoder_config", "rx_type", "rx_ports", "rx_address", "rx_recv_buffer_size",
                      "frames", "frame_count", "frame_timeout_ms", "enable_packet_logging", "force_reconfig",
                      "debug_level")
_REFUSED = {
    "rx_endpoint": "rx_endpoint is the inproc channel between odin's receive and control threads; framechain's "
                   "receive thread has none to configure: remove the key",
}
_DECODERS = {"DummyUDP": "dummy_udp"}
_DECODER_CONFIG = {"enable_packet_logging", "frame_timeout_ms", "udp_packets_per_frame", "udp_packet_size", "shape",
                   "dtype"}


@dataclass
class OdinReceiverConfig:
    """What an odin-style configure asks of framechain's receiver."""

    params: dict[str, Any] = field(default_factory=dict)      #: framechain's own configure keys
    endpoints: dict[str, str] = field(default_factory=dict)   #: "ready" / "release" to (re)bind
    ctrl_endpoint: str | None = None
    decoder_path: str | None = None
    debug_level: int | None = None


def _int(key: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, not {value!r}", key)
    return value


def _ports(value: Any) -> list[int]:
    """odin's rx_ports: ``"61649"``, ``"61649,61650"`` or a list of port numbers."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else None
    if items is None or not items:
        raise ConfigError(f"rx_ports must be a port, a comma-separated list of ports or a list, not {value!r}",
                          "rx_ports")
    ports = []
    for item in items:
        text = item.strip() if isinstance(item, str) else item
        port = int(text) if isinstance(text, str) and text.isdigit() else text
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"rx_ports: {item!r} is not a UDP port (1..65535)", "rx_ports")
        ports.append(port)
    return ports


def translate(params: Mapping[str, Any], current_source: Mapping[str, Any]) -> OdinReceiverConfig:
    """framechain's configure for an odin-style one; ConfigError naming the key for what cannot map."""
    out = OdinReceiverConfig(params={k: v for k, v in params.items() if k not in ODIN_RECEIVER_KEYS})
    for key, why in _REFUSED.items():
        if key in params:
            raise ConfigError(why, key)
    for odin_key, ours in (("frame_ready_endpoint", "ready"), ("frame_release_endpoint", "release")):
        if odin_key in params:
            if not isinstance(params[odin_key], str):
                raise ConfigError(f"{odin_key} must be a ZeroMQ endpoint string, not {params[odin_key]!r}", odin_key)
            out.endpoints[ours] = params[odin_key]
    if "ctrl_endpoint" in params:
        if not isinstance(params["ctrl_endpoint"], str):
            raise ConfigError("ctrl_endpoint must be a ZeroMQ endpoint string", "ctrl_endpoint")
        out.ctrl_endpoint = params["ctrl_endpoint"]
    if "decoder_path" in params:
        if not isinstance(params["decoder_path"], str):
            raise ConfigError("decoder_path must be a string", "decoder_path")
        out.decoder_path = params["decoder_path"]
    if "debug_level" in params:
        out.debug_level = _int("debug_level", params["debug_level"])
    if "rx_type" in params and params["rx_type"] != "udp":
        raise ConfigError(f"rx_type {params['rx_type']!r}: framechain's receiver takes odin's udp packets; a ZeroMQ "
                          "detector stream is a source of its own (source {\"type\": \"dectris_v2\", ...})", "rx_type")
    udp_keys = {"decoder_type", "decoder_config", "rx_ports", "rx_address", "rx_recv_buffer_size", "frames",
                "frame_count", "frame_timeout_ms"}
    if not udp_keys & set(params):
        return out
    if "source" in params:
        raise ConfigError("give framechain's source or odin's decoder keys (decoder_type, rx_ports ...), not both",
                          "source")
    current = dict(current_source) if current_source.get("type") == "udp" else {}
    if "decoder_type" in params:
        kind = params["decoder_type"]
        if kind not in _DECODERS:
            raise ConfigError(f"decoder_type {kind!r}: framechain's receiver decodes {sorted(_DECODERS)} packets "
                              "(and DECTRIS streams as sources of their own); there is no framechain decoder for "
                              f"{kind!r}", "decoder_type")
        current["decoder"] = _DECODERS[kind]
    elif not current:
        raise ConfigError("odin receiver keys need decoder_type (\"DummyUDP\") when no udp source is configured",
                          "decoder_type")
    src = {**current, "type": "udp"}
    dc = params.get("decoder_config", {})
    if not isinstance(dc, Mapping):
        raise ConfigError(f"decoder_config must be an object, not {dc!r}", "decoder_config")
    unknown = set(dc) - _DECODER_CONFIG
    if unknown:
        raise ConfigError(f"unknown decoder_config key(s) {sorted(unknown)} for the DummyUDP decoder; known: "
                          f"{sorted(_DECODER_CONFIG)}", "decoder_config")
    if "udp_packet_size" in dc:
        src["packet_size"] = _int("decoder_config/udp_packet_size", dc["udp_packet_size"], 1)
    for key in ("shape", "dtype"):
        if key in dc:
            src[key] = dc[key]
    timeout = dc.get("frame_timeout_ms", params.get("frame_timeout_ms"))
    if timeout is not None:
        src["frame_timeout_ms"] = _int("frame_timeout_ms", timeout, 1)
    if "rx_ports" in params:
        src["rx_ports"] = _ports(params["rx_ports"])
    if "rx_address" in params:
        if not isinstance(params["rx_address"], str):
            raise ConfigError("rx_address must be a string (an address of this host)", "rx_address")
        src["rx_address"] = params["rx_address"]
    if "rx_recv_buffer_size" in params:
        src["rcvbuf"] = _int("rx_recv_buffer_size", params["rx_recv_buffer_size"], 1)
    for key in ("frames", "frame_count"):
        if key in params:
            src["frames"] = _int(key, params[key])
    if "shape" not in src:
        packets = dc.get("udp_packets_per_frame")
        size = f" (up to {packets} packets x {src.get('packet_size', 8000)} bytes)" if isinstance(packets, int) else ""
        raise ConfigError("framechain's receiver places pixels, so it needs the frame size odin's receiver does "
                          f"without{size}: add \"shape\": [height, width] (and \"dtype\", default uint16) to "
                          "decoder_config; odin keeps them in the processor's DummyUDPProcessPlugin {width, height}",
                          "decoder_config")
    packets = dc.get("udp_packets_per_frame")
    if packets is not None:
        packets = _int("decoder_config/udp_packets_per_frame", packets, 1)
        itemsize = {"uint8": 1, "uint16": 2, "uint32": 4}.get(src.get("dtype", "uint16"), 2)
        shape = src["shape"]
        if isinstance(shape, list) and all(isinstance(n, int) and n > 0 for n in shape):
            nbytes = itemsize
            for n in shape:
                nbytes *= n
            need = -(-nbytes // src.get("packet_size", 8000))
            if need != packets:
                raise ConfigError(f"decoder_config: a {shape} {src.get('dtype', 'uint16')} frame is {need} packets of "
                                  f"{src.get('packet_size', 8000)} bytes, not udp_packets_per_frame {packets}",
                                  "decoder_config")
    out.params["source"] = src
    return out

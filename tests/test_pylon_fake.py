"""The camera-only paths of capture.pylon against fakes of exactly the pypylon objects they
touch: node maps (SFNC 2 and SFNC 1 spellings), InstantCamera, grab results with chunks
and BlockIDs, and a camera that is unplugged and comes back (or does not)."""
from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest

from capture.pylon import PylonCamera, PylonConfig, parse_cycle
from capture.pylon.nodes import Nodes, feature_names
from capture.pylon.seqmap import SeqMapper

H, W = 8, 12


# -- fakes ------------------------------------------------------------------------------------

class FakeNode:
    def __init__(self, log, name, value=None, lo=None, hi=None, inc=1, symbolics=None, writable=True):
        self.log, self.name, self.value = log, name, value
        self.lo, self.hi, self.inc, self.symbolics, self.writable = lo, hi, inc, symbolics, writable

    def IsValid(self):
        return True

    def IsReadable(self):
        return self.value is not None

    def IsWritable(self):
        return self.writable

    def GetValue(self):
        return self.value

    def SetValue(self, value):
        if self.symbolics is not None and value not in self.symbolics:
            raise ValueError(f"{self.name}: no entry {value!r}")
        if self.lo is not None and not self.lo <= value <= self.hi:
            raise ValueError(f"{self.name}: {value} out of range")
        self.value = value
        self.log.append((self.name, value))

    def Execute(self):
        self.log.append((self.name, "Execute"))

    def GetMin(self):
        return self.lo

    def GetMax(self):
        return self.hi

    def GetInc(self):
        return self.inc

    def GetSymbolics(self):
        return list(self.symbolics or [])


class FakeNodeMap:
    def __init__(self, log, specs):
        self.nodes = {name: FakeNode(log, name, **spec) for name, spec in specs.items()}

    def GetNode(self, name):
        return self.nodes.get(name)  # older pypylon: None for a missing node


COMMON = {
    "DeviceModelName": dict(value="acA4096-30uc"), "DeviceVendorName": dict(value="Basler"),
    "DeviceFirmwareVersion": dict(value="fw-1"),
    "Width": dict(value=4096, lo=4, hi=4096, inc=4), "Height": dict(value=2168, lo=4, hi=2168, inc=2),
    "OffsetX": dict(value=0, lo=0, hi=4080, inc=2), "OffsetY": dict(value=0, lo=0, hi=2152, inc=2),
    "PixelFormat": dict(value="BayerRG8", symbolics=["Mono8", "BayerRG8", "BayerRG12", "RGB8", "BGR8"]),
    "TriggerSelector": dict(value="FrameStart", symbolics=["FrameBurstStart", "FrameStart"]),
    "TriggerMode": dict(value="Off", symbolics=["Off", "On"]),
    "TriggerSource": dict(value="Line1", symbolics=["Line1", "Software"]),
    "ExposureAuto": dict(value="Continuous", symbolics=["Off", "Once", "Continuous"]),
    "GainAuto": dict(value="Continuous", symbolics=["Off", "Once", "Continuous"]),
    "AcquisitionFrameRateEnable": dict(value=False),
    "ChunkModeActive": dict(value=False), "ChunkEnable": dict(value=False),
}
SFNC2 = {
    **COMMON,
    "ExposureTime": dict(value=5000.0, lo=24.0, hi=1e7), "Gain": dict(value=0.0, lo=0.0, hi=24.0),
    "AcquisitionFrameRate": dict(value=30.0, lo=1.0, hi=32.0),
    "SequencerMode": dict(value="Off", symbolics=["Off", "On"]),
    "SequencerConfigurationMode": dict(value="Off", symbolics=["Off", "On"]),
    "SequencerSetSelector": dict(value=0, lo=0, hi=31), "SequencerPathSelector": dict(value=0, lo=0, hi=1),
    "SequencerSetNext": dict(value=0, lo=0, hi=31), "SequencerSetStart": dict(value=0, lo=0, hi=31),
    "SequencerTriggerSource": dict(value="Line1", symbolics=["Line1", "SoftwareSignal1", "FrameStart"]),
    "SequencerSetSave": dict(),
    "ChunkSelector": dict(value="Image", symbolics=["Image", "Gain", "ExposureTime", "Timestamp",
                                                    "SequencerSetActive", "PayloadCRC16"]),
}
SFNC1 = {
    **COMMON,
    "ExposureTimeAbs": dict(value=5000.0, lo=35.0, hi=1e6), "GainAbs": dict(value=0.0, lo=0.0, hi=12.0),
    "AcquisitionFrameRateAbs": dict(value=30.0, lo=1.0, hi=60.0),
    "GevTimestampTickFrequency": dict(value=125_000_000, writable=False),
    "SequenceEnable": dict(value=False), "SequenceAdvanceMode": dict(value="Controlled",
                                                                      symbolics=["Auto", "Controlled"]),
    "SequenceSetTotalNumber": dict(value=2, lo=1, hi=64), "SequenceSetIndex": dict(value=0, lo=0, hi=63),
    "SequenceSetExecutions": dict(value=1, lo=1, hi=256), "SequenceSetStore": dict(),
    "ChunkSelector": dict(value="Image", symbolics=["Image", "GainAll", "ExposureTime", "Timestamp",
                                                    "SequenceSetIndex", "Framecounter"]),
}


class FakeResult:
    """One grab result; ``set_``/``exposure_us``/``stamp``/``gain`` become chunks when given."""

    def __init__(self, block_id, set_=None, exposure_us=None, stamp=None, gain=None, ok=True, fill=None):
        self.block_id, self.ok, self.released = block_id, ok, False
        self.pixels = np.full((H, W), block_id if fill is None else fill, np.uint8)
        chunks = {"ChunkSequencerSetActive": set_, "ChunkSequenceSetIndex": set_,
                  "ChunkExposureTime": exposure_us, "ChunkTimestamp": stamp, "ChunkGain": gain}
        self.chunks = {k: dict(value=v) for k, v in chunks.items() if v is not None}

    def IsValid(self):
        return True

    def GrabSucceeded(self):
        return self.ok

    def GetBlockID(self):
        return self.block_id

    def GetErrorDescription(self):
        return "" if self.ok else "The buffer was incompletely grabbed."

    def GetErrorCode(self):
        return 0 if self.ok else 0xE1000014

    def GetTimeStamp(self):
        return 0

    def IsChunkDataAvailable(self):
        return bool(self.chunks)

    def GetChunkDataNodeMap(self):
        return FakeNodeMap([], self.chunks)

    @contextmanager
    def GetArrayZeroCopy(self):
        assert not self.released, "pixels read after the buffer went back to the driver"
        yield self.pixels

    def Release(self):
        self.released = True


REMOVE = "remove"  # script entry: the camera is unplugged at this point


class FakeDevice:
    def __init__(self, serial, specs, script, device_class="BaslerUsb"):
        self.serial, self.specs, self.device_class = serial, specs, device_class
        self.log: list = []
        self.node_map = FakeNodeMap(self.log, specs)
        self.scripts = [list(script)]  # one script per connection; reconnects pop the next
        self.results: list[FakeResult] = []

    def GetSerialNumber(self):
        return self.serial

    def GetModelName(self):
        return "acA4096-30uc"

    def GetVendorName(self):
        return "Basler"

    def GetDeviceClass(self):
        return self.device_class


class FakeInstantCamera:
    def __init__(self, device):
        self.device, self.grabbing, self.removed, self.opened = device, False, False, False
        self.script = device.scripts.pop(0) if device.scripts else []
        self.instant = FakeNodeMap(device.log, {"MaxNumBuffer": dict(value=10, lo=1, hi=1024),
                                                "StaticChunkNodeMapPoolSize": dict(value=10, lo=0, hi=1024)})

    def RegisterConfiguration(self, handler, mode, cleanup):
        self.handler = handler

    def Open(self):
        self.opened = True

    def Close(self):
        self.opened = False

    def DestroyDevice(self):
        self.opened = False

    def GetNodeMap(self):
        return self.device.node_map

    def GetInstantCameraNodeMap(self):
        return self.instant

    def IsGrabbing(self):
        return self.grabbing

    def StartGrabbing(self, strategy):
        assert strategy == "OneByOne"
        self.grabbing = True

    def StopGrabbing(self):
        self.grabbing = False

    def IsCameraDeviceRemoved(self):
        return self.removed

    def RetrieveResult(self, timeout_ms, handling):
        if self.removed or not self.script:
            raise RuntimeError("device has been removed")
        item = self.script.pop(0)
        if item == REMOVE:
            self.removed = True
            self.handler.OnCameraDeviceRemoved(self)
            FAKE_BUS.unplug(self.device)
            raise RuntimeError("device has been removed")
        self.device.results.append(item)
        return item


class FakeBus:
    """The transport layer: which devices enumerate, and when an unplugged one comes back."""

    def __init__(self):
        self.devices: list[FakeDevice] = []
        self.back_after: dict[str, int] = {}  # serial -> enumerations until it reappears (-1: never)
        self.unplugged: dict[str, FakeDevice] = {}

    def unplug(self, device):
        self.devices.remove(device)
        self.unplugged[device.serial] = device

    def EnumerateDevices(self):
        for serial, dev in list(self.unplugged.items()):
            left = self.back_after.get(serial, -1)
            if left == 0:
                self.devices.append(self.unplugged.pop(serial))
            elif left > 0:
                self.back_after[serial] = left - 1
        return list(self.devices)

    def CreateDevice(self, info):
        return info


FAKE_BUS = FakeBus()


class _Handler:
    pass


fake_pylon = SimpleNamespace(
    TlFactory=SimpleNamespace(GetInstance=lambda: FAKE_BUS),
    InstantCamera=FakeInstantCamera,
    ConfigurationEventHandler=_Handler,
    GrabStrategy_OneByOne="OneByOne",
    TimeoutHandling_Return="Return",
    TimeoutHandling_ThrowException="Throw",
    RegistrationMode_Append="Append",
    Cleanup_None="None",
    GetPylonVersionString=lambda: "fake",
)


@pytest.fixture
def bus():
    FAKE_BUS.__init__()
    yield FAKE_BUS
    FAKE_BUS.__init__()


def plug(bus, specs, script, serial="40012345"):
    dev = FakeDevice(serial, specs, script)
    bus.devices.append(dev)
    return dev


def cycle_script(blocks, n=2, t_us=(1000.0, 8000.0), **extra):
    return [FakeResult(b, set_=b % n, exposure_us=t_us[b % n], **extra) for b in blocks]


def open_camera(**cfg):
    sleeps: list[float] = []
    cfg.setdefault("exposures_us", (1000.0, 8000.0))
    cam = PylonCamera(PylonConfig(serial="40012345", **cfg), pylon=fake_pylon, sleep=sleeps.append)
    return cam, sleeps


def sequencer_writes(log, start, end):
    i = log.index(start)
    j = len(log) - 1 - log[::-1].index(end)
    return log[i:j + 1]


# -- sequencer programming and name choice -------------------------------------------------------

@pytest.mark.parametrize("cycle", [(1000.0, 8000.0), (500.0, 2000.0, 8000.0)])
def test_sfnc2_sequencer_programming_for_2_and_3_exposures(bus, cycle):
    dev = plug(bus, SFNC2, [])
    cam, _ = open_camera(exposures_us=cycle, gain_db=3.0, buffers=12)
    assert cam.mode == "sequencer" and cam.names.sfnc == 2
    n = len(cycle)
    expected = [("SequencerConfigurationMode", "On")]
    for s, t in enumerate(cycle):
        expected += [("SequencerSetSelector", s), ("ExposureTime", t), ("Gain", 3.0), ("SequencerPathSelector", 0),
                     ("SequencerSetNext", (s + 1) % n), ("SequencerTriggerSource", "FrameStart"),
                     ("SequencerSetSave", "Execute")]
    expected += [("SequencerSetStart", 0), ("SequencerConfigurationMode", "Off"), ("SequencerMode", "On")]
    assert sequencer_writes(dev.log, ("SequencerConfigurationMode", "On"), ("SequencerMode", "On")) == expected
    log = dev.log
    # autos off, free run, chunks on: all before the sequencer stores the settings in its sets
    seq_on = log.index(("SequencerConfigurationMode", "On"))
    for write in [("ExposureAuto", "Off"), ("GainAuto", "Off"), ("TriggerMode", "Off"), ("ChunkModeActive", True)]:
        assert write in log[:seq_on], write
    enabled = [log[i][1] for i in range(len(log) - 1) if log[i][0] == "ChunkSelector"
               and log[i + 1] == ("ChunkEnable", True)]
    assert enabled == ["ExposureTime", "Timestamp", "SequencerSetActive", "Gain"]
    assert ("MaxNumBuffer", 12) in log and ("StaticChunkNodeMapPoolSize", 12) in log
    assert log.index(("SequencerMode", "Off")) < log.index(("PixelFormat", "BayerRG8"))


def test_sfnc1_names_are_chosen_by_what_the_node_map_has(bus):
    dev = plug(bus, SFNC1, [])
    cam, _ = open_camera(exposures_us=(1000.0, 4000.0, 16000.0), gain_db=None)
    assert cam.names.sfnc == 1 and cam.names.exposure == "ExposureTimeAbs" and cam.names.sequencer == "sfnc1"
    assert not any(name.startswith("Sequencer") or name == "ExposureTime" for name, _ in dev.log)
    writes = sequencer_writes(dev.log, ("SequenceAdvanceMode", "Auto"), ("SequenceEnable", True))
    assert writes == [
        ("SequenceAdvanceMode", "Auto"), ("SequenceSetTotalNumber", 3),
        *[w for s, t in enumerate((1000.0, 4000.0, 16000.0))
          for w in [("SequenceSetIndex", s), ("ExposureTimeAbs", t), ("SequenceSetExecutions", 1),
                    ("SequenceSetStore", "Execute")]],
        ("SequenceEnable", True),
    ]
    enabled = [v for (k, v) in dev.log if k == "ChunkSelector"]
    assert enabled == ["ExposureTime", "Timestamp", "SequenceSetIndex", "GainAll"]


def test_feature_names_without_a_sequencer_fall_back_to_software_triggers(bus):
    specs = {k: v for k, v in SFNC2.items() if not k.startswith("Sequencer")}
    dev = plug(bus, specs, [])
    cam, _ = open_camera()
    assert cam.mode == "software" and feature_names(Nodes(dev.node_map)).sequencer is None
    assert ("TriggerMode", "On") in dev.log and ("TriggerSource", "Software") in dev.log
    with pytest.raises(ValueError, match="no sequencer"):
        open_camera(mode="sequencer")


def test_settings_outside_the_cameras_ranges_are_clear_errors(bus):
    plug(bus, SFNC2, [])
    with pytest.raises(ValueError, match=r"ExposureTime 2e\+07 µs is out of range.*24..1e\+07"):
        open_camera(exposures_us=(1000.0, 2e7), grab_timeout_ms=30000)
    with pytest.raises(ValueError, match=r"ROI width 5000 is out of range.*4..4096"):
        open_camera(width=5000, height=100)
    with pytest.raises(ValueError, match="multiple of 4"):
        open_camera(width=1002, height=100)
    with pytest.raises(ValueError, match=r"BayerGB8.*not supported.*offers: Mono8, BayerRG8"):
        open_camera(pixel_format="BayerGB8")
    with pytest.raises(ValueError, match="Gain 30 dB is out of range"):
        open_camera(gain_db=30.0)


# -- metadata, gaps and the exposure cycle --------------------------------------------------------

def test_chunk_metadata_goes_into_the_frame_header(bus):
    script = [FakeResult(b, set_=b % 2, exposure_us=(998.0, 7990.0)[b % 2], stamp=10_000 + b, gain=3.5)
              for b in range(4)]
    dev = plug(bus, SFNC2, script)
    cam, _ = open_camera(frames=4, width=W, height=H)
    frames = list(cam.frames())
    assert [f.seq for f in frames] == [0, 1, 2, 3] and [f.set for f in frames] == [0, 1, 0, 1]
    assert [f.exposure_s for f in frames] == pytest.approx([998e-6, 7990e-6, 998e-6, 7990e-6])
    assert [f.t_ns for f in frames] == [10_000, 10_001, 10_002, 10_003]
    f = frames[1]
    assert f.gain_db == 3.5 and f.stream == "40012345" and f.pixel_format == "BayerRG8"
    assert f.meta == {"stem": "000001", "block_id": 1, "clock": "camera", "exposure_from": "chunk"}
    assert f.data.shape == (H, W) and int(f.data[0, 0]) == 1
    assert all(r.released for r in dev.results), "every grab buffer goes back to the driver"
    frames[0].data[...] = 77  # our own copy, not the driver's buffer
    assert int(dev.results[0].pixels[0, 0]) == 0


def test_gige_timestamps_in_ticks_become_nanoseconds(bus):
    plug(bus, SFNC1, [FakeResult(0, set_=0, exposure_us=1000.0, stamp=125_000_000)])
    cam, _ = open_camera(frames=1, gain_db=None)
    assert next(cam.frames()).t_ns == 1_000_000_000


def test_a_blockid_jump_is_a_counted_gap_and_the_sets_stay_right(bus):
    plug(bus, SFNC2, cycle_script([0, 1, 2, 5, 6, 7]))
    cam, _ = open_camera(frames=6)
    frames = list(cam.frames())
    assert [f.seq for f in frames] == [0, 1, 2, 5, 6, 7]
    assert all(f.seq % 2 == f.set for f in frames)
    assert [f.exposure_s for f in frames] == pytest.approx([1e-3, 8e-3, 1e-3, 8e-3, 1e-3, 8e-3])
    assert cam.stats.gaps == 2 and cam.stats.gap_ranges == [(3, 4)] and cam.stats.grabbed == 6


def test_an_incomplete_buffer_is_counted_skipped_and_leaves_a_gap(bus):
    script = cycle_script([0, 1])
    script += [FakeResult(2, ok=False)]
    script += cycle_script([3, 4])
    dev = plug(bus, SFNC2, script)
    cam, _ = open_camera(frames=4)
    frames = list(cam.frames())
    assert [f.seq for f in frames] == [0, 1, 3, 4] and [f.set for f in frames] == [0, 1, 1, 0]
    assert cam.stats.incomplete == 1 and cam.stats.gaps == 1 and "incompletely" in cam.stats.last_error
    assert all(r.released for r in dev.results)


def test_a_set_that_disagrees_with_the_blockid_skips_ahead_instead_of_relabelling(bus):
    script = [FakeResult(0, set_=0, exposure_us=1000.0), FakeResult(1, set_=1, exposure_us=8000.0),
              FakeResult(2, set_=1, exposure_us=8000.0), FakeResult(3, set_=0, exposure_us=1000.0)]
    plug(bus, SFNC2, script)
    cam, _ = open_camera(frames=4)
    frames = list(cam.frames())
    assert [(f.seq, f.set) for f in frames] == [(0, 0), (1, 1), (3, 1), (4, 0)]
    assert cam.stats.resyncs == 1 and cam.stats.gaps == 1


def test_seq_mapper_handles_gige_blockid_wrap():
    m = SeqMapper(2)
    seqs = [m.seq(m.index(b), s) for b, s in [(65533, 0), (65534, 1), (65535, 0), (1, 1), (2, 0)]]
    assert seqs == [0, 1, 2, 3, 4]


# -- removal and reconnect ---------------------------------------------------------------------------

def test_removal_reconnects_with_backoff_and_resumes_after_a_gap(bus, caplog):
    dev = plug(bus, SFNC2, cycle_script([0, 1, 2]) + [REMOVE])
    dev.scripts.append(cycle_script([0, 1, 2]))  # after the reconnect BlockIDs restart at 0, set 0
    bus.back_after[dev.serial] = 2  # not found on the first two re-enumerations
    cam, sleeps = open_camera(frames=6, reconnect_attempts=5, reconnect_backoff_s=0.5, reconnect_backoff_max_s=8)
    frames = list(cam.frames())
    assert [f.seq for f in frames] == [0, 1, 2, 4, 5, 6]  # seq 3 missing: 4 ≡ set 0 again
    assert all(f.seq % 2 == f.set for f in frames)
    assert sleeps == [0.5, 1.0, 2.0]
    assert cam.stats.reconnects == 1 and cam.stats.gaps == 1 and cam.stats.gap_ranges == [(3, 3)]
    assert "removed" in caplog.text and "reconnected" in caplog.text
    assert dev.log.count(("SequencerMode", "On")) == 2, "the camera is reconfigured after the reconnect"


def test_removal_gives_up_after_the_configured_attempts(bus):
    plug(bus, SFNC2, cycle_script([0, 1]) + [REMOVE])
    cam, sleeps = open_camera(reconnect_attempts=4, reconnect_backoff_s=1.0, reconnect_backoff_max_s=3.0)
    it = cam.frames()
    assert [next(it).seq, next(it).seq] == [0, 1]
    with pytest.raises(RuntimeError, match=r"removed and is not back after 4 reconnect attempt\(s\)"):
        next(it)
    assert sleeps == [1.0, 2.0, 3.0, 3.0]
    assert "not back" in cam.stats.last_error


def test_a_real_camera_is_never_replaced_by_the_emulator(bus):
    emu = FakeDevice("0815-0000", SFNC2, [], device_class="BaslerCamEmu")
    bus.devices.append(emu)
    with pytest.raises(RuntimeError, match=r"no Basler camera found \(found: 0815-0000"):
        PylonCamera(PylonConfig(), pylon=fake_pylon)
    with pytest.raises(ValueError, match="emulator=True"):
        PylonCamera(PylonConfig(serial="0815-0000"), pylon=fake_pylon)


# -- config -----------------------------------------------------------------------------------------

def test_exposure_cycle_in_microseconds_or_stops():
    assert parse_cycle("1000,8000") == (1000.0, 8000.0)
    assert parse_cycle(base_us=2000, stops="-1,+2") == pytest.approx((1000.0, 8000.0))
    assert PylonConfig(base_us=4000, stops=(-2, 0, 2)).cycle_us == pytest.approx((1000.0, 4000.0, 16000.0))
    for bad, match in [(dict(exposures_us="1000"), "2 or 3"), (dict(exposures_us="1000,1010"), "too close"),
                       (dict(exposures_us="1000,-5"), "positive"), (dict(base_us=1000), "go together"),
                       (dict(exposures_us="1000,x"), "not a number"), (dict(mode="burst"), "mode"),
                       (dict(width=101, height=100), "even"), (dict(image_dir="/tmp"), "emulator"),
                       (dict(pixel_format="YUV9"), "unknown pixel format")]:
        with pytest.raises(ValueError, match=match):
            PylonConfig(**bad)

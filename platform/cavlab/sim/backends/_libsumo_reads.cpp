// Every vehicle's slot, lane position and speed in one call, through libsumo's C++ API.
//
// The libsumo backend's read of the world state: the vehicles on each lane (in the order set by
// set_lanes), and per vehicle its lane's row, its slot (from the backend's id -> slot dict), lane
// position and speed, written into the caller's buffers. It runs inside the libsumo simulation of
// this process: bind() looks the three libsumo functions up in the _libsumo.so already loaded
// (dlsym on its own handle, so none of libsumo's symbols, nor those of the libraries it bundles,
// become global). Calling the C++ API directly skips SWIG's per-call wrapping and the Python
// objects a read through it builds (docs/benchmarks.md).
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// libsumo::Lane::getLastStepVehicleIDs, libsumo::Vehicle::getLanePosition and ::getSpeed (static members:
// plain functions of these signatures), under their Itanium C++ ABI names
using VehicleIds = std::vector<std::string> (*)(const std::string&);
using VehicleValue = double (*)(const std::string&);
constexpr const char* kLaneVehicleIds =
    "_ZN7libsumo4Lane21getLastStepVehicleIDsERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE";
constexpr const char* kLanePosition =
    "_ZN7libsumo7Vehicle15getLanePositionERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE";
constexpr const char* kSpeed = "_ZN7libsumo7Vehicle8getSpeedERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE";

VehicleIds lane_vehicle_ids = nullptr;
VehicleValue lane_position = nullptr;
VehicleValue speed = nullptr;
std::vector<std::string> lanes;

}  // namespace

static PyObject* bind(PyObject*, PyObject* arg) {
    const char* path = PyUnicode_AsUTF8(arg);
    if (!path) return nullptr;
    void* handle = dlopen(path, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
    if (!handle) return PyErr_Format(PyExc_ImportError, "libsumo is not loaded from %s", path);
    auto ids = reinterpret_cast<VehicleIds>(dlsym(handle, kLaneVehicleIds));
    auto position = reinterpret_cast<VehicleValue>(dlsym(handle, kLanePosition));
    auto vehicle_speed = reinterpret_cast<VehicleValue>(dlsym(handle, kSpeed));
    dlclose(handle);  // drops only the reference taken here: the library stays loaded
    if (!ids || !position || !vehicle_speed)
        return PyErr_Format(PyExc_ImportError, "%s lacks libsumo's C++ API (Lane, Vehicle getters)", path);
    lane_vehicle_ids = ids;
    lane_position = position;
    speed = vehicle_speed;
    Py_RETURN_NONE;
}

static PyObject* set_lanes(PyObject*, PyObject* arg) {
    PyObject* seq = PySequence_Fast(arg, "lanes: a sequence of lane ids");
    if (!seq) return nullptr;
    std::vector<std::string> out;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
        Py_ssize_t len;
        const char* s = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &len);
        if (!s) { Py_DECREF(seq); return nullptr; }
        out.emplace_back(s, len);
    }
    Py_DECREF(seq);
    lanes.swap(out);
    Py_RETURN_NONE;
}

static PyObject* read(PyObject*, PyObject* args) {
    if (!lane_vehicle_ids) return PyErr_Format(PyExc_RuntimeError, "call bind() first");
    PyObject* slot_of;
    Py_buffer lane_row, slot, pos, spd;
    if (!PyArg_ParseTuple(args, "O!w*w*w*w*", &PyDict_Type, &slot_of, &lane_row, &slot, &pos, &spd)) return nullptr;
    Py_ssize_t cap = slot.len / (Py_ssize_t)sizeof(Py_ssize_t);
    for (const Py_buffer* b : {&lane_row, &pos, &spd}) cap = std::min(cap, b->len / (Py_ssize_t)sizeof(double));
    Py_ssize_t n = 0;
    bool failed = false;
    try {
        for (size_t row = 0; row < lanes.size() && n >= 0 && !failed; ++row) {
            for (const std::string& id : lane_vehicle_ids(lanes[row])) {
                if (n == cap) { n = -1; break; }
                PyObject* key = PyUnicode_FromStringAndSize(id.data(), (Py_ssize_t)id.size());
                PyObject* value = key ? PyDict_GetItemWithError(slot_of, key) : nullptr;
                Py_XDECREF(key);
                if (!value) {
                    if (!PyErr_Occurred()) PyErr_Format(PyExc_KeyError, "vehicle '%s' is not registered", id.c_str());
                    failed = true;
                    break;
                }
                static_cast<Py_ssize_t*>(slot.buf)[n] = PyLong_AsSsize_t(value);
                static_cast<Py_ssize_t*>(lane_row.buf)[n] = (Py_ssize_t)row;
                static_cast<double*>(pos.buf)[n] = lane_position(id);
                static_cast<double*>(spd.buf)[n] = speed(id);
                ++n;
            }
        }
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
        failed = true;
    }
    for (Py_buffer* b : {&lane_row, &slot, &pos, &spd}) PyBuffer_Release(b);
    return failed ? nullptr : PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_O, "bind(path): use the libsumo loaded from this _libsumo.so"},
    {"set_lanes", set_lanes, METH_O, "set_lanes(lane_ids): the lanes read() reads, in this order"},
    {"read", read, METH_VARARGS, "read(slot_of, lane_row, slot, pos, speed) -> n: per vehicle on the lanes its lane's row (in set_lanes' "
     "order), slot, lane position and speed, into the first n entries of these int64/float64 buffers; -1 "
     "when they are too small"},
    {nullptr, nullptr, 0, nullptr}};
static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_libsumo_reads", nullptr, -1, methods};
PyMODINIT_FUNC PyInit__libsumo_reads(void) { return PyModule_Create(&module); }

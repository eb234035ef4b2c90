//! Borrow texts from Python without copying: an Arrow string or binary array through the Arrow
//! PyCapsule interface (`__arrow_c_array__`, the C Data Interface), or a list of `str`/`bytes`.

use crate::errors::config_error;
use mithril_dedup::texts::{ArrowStrings, Offsets, Texts};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyString, PyTuple};
use std::ffi::{c_char, c_void, CStr};

/// `struct ArrowSchema` of the Arrow C Data Interface.
#[repr(C)]
struct ArrowSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut ArrowSchema,
    dictionary: *mut ArrowSchema,
    release: Option<unsafe extern "C" fn(*mut ArrowSchema)>,
    private_data: *mut c_void,
}

/// `struct ArrowArray` of the Arrow C Data Interface.
#[repr(C)]
struct ArrowArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *mut *const c_void,
    children: *mut *mut ArrowArray,
    dictionary: *mut ArrowArray,
    release: Option<unsafe extern "C" fn(*mut ArrowArray)>,
    private_data: *mut c_void,
}

/// Call `f` with a view of the texts in `obj`; the borrowed memory stays alive during the call.
pub fn with_texts<R>(
    obj: &Bound<'_, PyAny>,
    f: impl FnOnce(&dyn Texts) -> PyResult<R>,
) -> PyResult<R> {
    if obj.hasattr("__arrow_c_array__")? {
        let pair = obj.call_method0("__arrow_c_array__")?;
        let pair = pair.cast::<PyTuple>()?;
        let schema = pair.get_item(0)?;
        let array = pair.get_item(1)?;
        let schema = schema.cast::<PyCapsule>()?;
        let array = array.cast::<PyCapsule>()?;
        let sp = schema.pointer_checked(Some(c"arrow_schema"))?;
        let ap = array.pointer_checked(Some(c"arrow_array"))?;
        // SAFETY: the capsules are named as the PyCapsule interface specifies, so they hold a
        // live ArrowSchema and ArrowArray owned by the capsules, which outlive `f`.
        let (schema, array) = unsafe {
            (
                &*(sp.as_ptr() as *const ArrowSchema),
                &*(ap.as_ptr() as *const ArrowArray),
            )
        };
        // SAFETY: as above; the buffers are owned by the array for the capsule's lifetime.
        let view = unsafe { arrow_view(schema, array)? };
        return f(&view);
    }
    let seq = obj.try_iter().map_err(|_| {
        config_error(format!(
            "texts must be a list of str/bytes or an Arrow string array, not {}",
            type_name(obj)
        ))
    })?;
    let items: Vec<Bound<'_, PyAny>> = seq.collect::<PyResult<_>>()?;
    let mut view: Vec<Option<&[u8]>> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.is_none() {
            view.push(None);
        } else if let Ok(s) = item.cast::<PyString>() {
            view.push(Some(s.to_str()?.as_bytes()));
        } else if let Ok(b) = item.cast::<PyBytes>() {
            view.push(Some(b.as_bytes()));
        } else {
            return Err(config_error(format!(
                "text {i} is a {}, not str, bytes or None",
                type_name(item)
            )));
        }
    }
    f(&view)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// # Safety
/// `schema` and `array` must be valid C Data Interface structs whose buffers live as long as
/// the returned view.
unsafe fn arrow_view<'a>(
    schema: &ArrowSchema,
    array: &'a ArrowArray,
) -> PyResult<ArrowStrings<'a>> {
    if schema.release.is_none() || array.release.is_none() {
        return Err(config_error("the Arrow array was already released".into()));
    }
    if schema.format.is_null() {
        return Err(config_error("the Arrow schema has no format".into()));
    }
    // SAFETY: the format of a live schema is a NUL-terminated string.
    let format = unsafe { CStr::from_ptr(schema.format) }
        .to_string_lossy()
        .into_owned();
    let large = match format.as_str() {
        "u" | "z" => false,
        "U" | "Z" => true,
        other => {
            return Err(config_error(format!(
                "texts must be an Arrow string or binary array, not Arrow format {other:?} \
                 (cast string_view or dictionary columns to large_string first)"
            )))
        }
    };
    let (len, offset) = (array.length, array.offset);
    if len < 0 || offset < 0 || array.n_buffers != 3 || array.buffers.is_null() {
        return Err(config_error(format!(
            "malformed Arrow array: length {len}, offset {offset}, {} buffers",
            array.n_buffers
        )));
    }
    let (len, offset) = (len as usize, offset as usize);
    // SAFETY: a live array with n_buffers == 3 has three buffer pointers.
    let buffers = unsafe { std::slice::from_raw_parts(array.buffers, 3) };
    if len == 0 {
        return ArrowStrings::new(Offsets::I64(&[0]), &[], None, 0, 0)
            .map_err(crate::errors::dedup_to_py);
    }
    if buffers[1].is_null() {
        return Err(config_error(
            "malformed Arrow array: no offsets buffer".into(),
        ));
    }
    let validity = if array.null_count != 0 && !buffers[0].is_null() {
        // SAFETY: the validity bitmap covers offset + len bits.
        Some(unsafe {
            std::slice::from_raw_parts(buffers[0] as *const u8, (offset + len).div_ceil(8))
        })
    } else {
        None
    };
    let (offsets, last) = if large {
        // SAFETY: a large array's offsets buffer holds offset + len + 1 i64 values.
        let o =
            unsafe { std::slice::from_raw_parts((buffers[1] as *const i64).add(offset), len + 1) };
        (Offsets::I64(o), o[len])
    } else {
        // SAFETY: as above, with i32 offsets.
        let o =
            unsafe { std::slice::from_raw_parts((buffers[1] as *const i32).add(offset), len + 1) };
        (Offsets::I32(o), i64::from(o[len]))
    };
    let data: &[u8] = if buffers[2].is_null() || last <= 0 {
        &[]
    } else {
        // SAFETY: the data buffer holds at least the bytes up to the last offset.
        unsafe { std::slice::from_raw_parts(buffers[2] as *const u8, last as usize) }
    };
    ArrowStrings::new(offsets, data, validity, offset, len).map_err(crate::errors::dedup_to_py)
}

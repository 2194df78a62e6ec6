using Microsoft.Data.Sqlite;
using SQLitePCL;

namespace Treaty.Storage.Sqlite;

/// <summary>
/// A statement of the writer's hot path on the SQLite library directly: prepared once, its
/// parameters found by name once, then bound by position for every write. Microsoft.Data.Sqlite
/// looks each parameter's position up by name and switches on its value's type at every execution,
/// and wraps every step in a data reader: about a tenth of the writer thread's time (profiled at
/// 64 clients). Errors are Microsoft.Data.Sqlite's <see cref="SqliteException"/>, as from the rest
/// of the store. Used only on the writer thread, inside the batch's transaction (so it never meets
/// SQLITE_BUSY: the writer holds the write lock).
/// </summary>
internal sealed class RawStatement : IDisposable
{
    private readonly sqlite3 _db;
    private readonly sqlite3_stmt _statement;
    private readonly int[] _positions;

    /// <param name="db">The connection's handle.</param>
    /// <param name="sql">One statement.</param>
    /// <param name="parameters">Its parameters' names; <see cref="Bind(int, long)"/> and the others take
    /// a parameter by its place in this list.</param>
    public RawStatement(sqlite3 db, string sql, params string[] parameters)
    {
        _db = db;
        Check(raw.sqlite3_prepare_v2(db, sql, out _statement));
        _positions = new int[parameters.Length];
        for (var i = 0; i < parameters.Length; i++)
        {
            _positions[i] = raw.sqlite3_bind_parameter_index(_statement, parameters[i]);
            if (_positions[i] == 0)
            {
                _statement.Dispose();
                throw new ArgumentException($"The statement has no parameter '{parameters[i]}'.", nameof(parameters));
            }
        }
    }

    public void Bind(int parameter, long value) => Check(raw.sqlite3_bind_int64(_statement, _positions[parameter], value));

    public void Bind(int parameter, long? value) =>
        Check(value is { } v ? raw.sqlite3_bind_int64(_statement, _positions[parameter], v) : raw.sqlite3_bind_null(_statement, _positions[parameter]));

    public void Bind(int parameter, int? value) => Bind(parameter, (long?)value);

    public void Bind(int parameter, bool value) => Bind(parameter, value ? 1L : 0L);

    public void Bind(int parameter, string? value) =>
        Check(value is null ? raw.sqlite3_bind_null(_statement, _positions[parameter]) : raw.sqlite3_bind_text(_statement, _positions[parameter], value));

    public void Bind(int parameter, byte[]? value) =>
        Check(value is null ? raw.sqlite3_bind_null(_statement, _positions[parameter]) : raw.sqlite3_bind_blob(_statement, _positions[parameter], value));

    /// <summary>Runs the statement to its end; the first column of its first row as an integer, or
    /// null when it gave no row (or a NULL there).</summary>
    public long? ExecuteScalarInt64()
    {
        try
        {
            long? first = null;
            var rc = raw.sqlite3_step(_statement);
            if (rc == raw.SQLITE_ROW && raw.sqlite3_column_type(_statement, 0) != raw.SQLITE_NULL)
            {
                first = raw.sqlite3_column_int64(_statement, 0);
            }

            while (rc == raw.SQLITE_ROW)
            {
                rc = raw.sqlite3_step(_statement);
            }

            if (rc != raw.SQLITE_DONE)
            {
                Check(rc);
            }

            return first;
        }
        finally
        {
            // The error, if any, was the step's; the reset only makes the statement reusable.
            raw.sqlite3_reset(_statement);
        }
    }

    /// <summary>Runs the statement to its end, ignoring any rows.</summary>
    public void ExecuteNonQuery() => ExecuteScalarInt64();

    public void Dispose() => _statement.Dispose();

    private void Check(int rc)
    {
        if (rc != raw.SQLITE_OK)
        {
            SqliteException.ThrowExceptionForRC(rc, _db);
        }
    }
}

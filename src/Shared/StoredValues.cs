using System.Buffers.Text;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Serialization;

namespace Treaty.Storage;

/// <summary>
/// How model values are written to columns. The stored names are the store's own format, spelled
/// out here rather than borrowed from the wire names, so that a change to the API cannot silently
/// change what the indexes and existing rows mean. Compiled into each store (a linked file), so
/// the SQLite and PostgreSQL stores write the same values.
/// </summary>
internal static class StoredValues
{
    public static string Status(TransactionStatus status) => status switch
    {
        TransactionStatus.Prepared => "prepared",
        TransactionStatus.Pending => "pending",
        TransactionStatus.Running => "running",
        TransactionStatus.Aborting => "aborting",
        TransactionStatus.Committed => "committed",
        TransactionStatus.Aborted => "aborted",
        _ => throw new ArgumentOutOfRangeException(nameof(status), status, "Unknown status."),
    };

    /// <summary>The status a stored value names; false for a value this build does not write.</summary>
    public static bool TryParseStatus(string stored, out TransactionStatus status)
    {
        foreach (var candidate in Enum.GetValues<TransactionStatus>())
        {
            if (Status(candidate) == stored)
            {
                status = candidate;
                return true;
            }
        }

        status = default;
        return false;
    }

    public static string Protocol(Protocol protocol) => protocol switch
    {
        Core.Model.Protocol.Saga => "saga",
        Core.Model.Protocol.Tcc => "tcc",
        Core.Model.Protocol.TwoPhaseCommit => "2pc",
        Core.Model.Protocol.ThreePhaseCommit => "3pc",
        Core.Model.Protocol.Msg => "msg",
        Core.Model.Protocol.Choreography => "choreography",
        _ => throw new ArgumentOutOfRangeException(nameof(protocol), protocol, "Unknown protocol."),
    };

    /// <summary>A journal row read with the columns <c>seq, at, kind, branch, op, attempt, status_code,
    /// detail, duration_ms, body</c>, in that order.</summary>
    public static JournalRecord JournalRecord(System.Data.Common.DbDataReader reader, string gid) => new(
        reader.GetInt64(0),
        gid,
        new JournalEntry(
            Time(reader.GetInt64(1)),
            reader.GetString(2),
            reader.IsDBNull(3) ? null : reader.GetString(3),
            reader.IsDBNull(4) ? null : reader.GetString(4),
            reader.IsDBNull(5) ? null : reader.GetInt32(5),
            reader.IsDBNull(6) ? null : reader.GetInt32(6),
            reader.IsDBNull(7) ? null : reader.GetString(7),
            reader.IsDBNull(8) ? null : reader.GetInt64(8),
            reader.IsDBNull(9) ? null : reader.GetString(9)));

    /// <summary>UTC ticks: exact and never negative.</summary>
    public static long Time(DateTimeOffset at) => at.UtcTicks;

    public static DateTimeOffset Time(long ticks) => new(ticks, TimeSpan.Zero);
}

/// <summary>A transaction as the columns of one <c>transactions</c> row, prepared off the writer thread.</summary>
internal sealed record StoredRow(
    string Gid,
    string Protocol,
    string Status,
    bool Stuck,
    long CreatedAt,
    long UpdatedAt,
    long? NextWakeAt,
    string Fingerprint,
    long Version,
    byte[] StateJson,
    byte[]? SpecJson)
{
    /// <summary>True for a committed or aborted transaction.</summary>
    public bool Terminal => Status is "committed" or "aborted";

    /// <summary>The row of a decision: the progress only (the spec is the insert's).</summary>
    public static StoredRow From(TransactionState state) => From(state, withSpec: false);

    /// <summary>The row of an insert: the spec too.</summary>
    public static StoredRow ForInsert(TransactionState state) => From(state, withSpec: true);

    private static StoredRow From(TransactionState state, bool withSpec) => new(
        state.Gid,
        StoredValues.Protocol(state.Spec.Protocol),
        StoredValues.Status(state.Status),
        state.Stuck,
        StoredValues.Time(state.CreatedAt),
        StoredValues.Time(state.UpdatedAt),
        state.NextWakeAt is { } wake ? StoredValues.Time(wake) : null,
        state.Fingerprint,
        state.Version,
        StoredStateCodec.Progress(state),
        withSpec ? StoredStateCodec.Spec(state.Spec) : null);
}

/// <summary>The opaque keyset cursor of a listing: the sort key of the last item of a page.</summary>
internal readonly record struct ListCursor(long CreatedAt, string Gid)
{
    private const char Separator = '|';

    public string Encode() =>
        Base64Url.EncodeToString(Encoding.UTF8.GetBytes(
            CreatedAt.ToString(CultureInfo.InvariantCulture) + Separator + Gid));

    /// <exception cref="ArgumentException">The text is not a cursor this store issued.</exception>
    public static ListCursor Decode(string cursor)
    {
        try
        {
            var text = Encoding.UTF8.GetString(Base64Url.DecodeFromChars(cursor));
            var separator = text.IndexOf(Separator, StringComparison.Ordinal);
            if (separator > 0
                && long.TryParse(text.AsSpan(0, separator), NumberStyles.None, CultureInfo.InvariantCulture, out var createdAt))
            {
                return new ListCursor(createdAt, text[(separator + 1)..]);
            }
        }
        catch (FormatException)
        {
        }

        throw new ArgumentException("The cursor is not one this store issued.", nameof(cursor));
    }
}

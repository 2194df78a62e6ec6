using System.Text.Json;
using Treaty.Core.Model;

namespace Treaty.Core.Serialization;

/// <summary>
/// How a store keeps a transaction: the submitted spec (its branches, URLs and payload: most of the
/// bytes, and immutable) written once at the insert, and the progress (everything else, small)
/// written by every decision. UTF-8 JSON, never a UTF-16 string in between.
/// </summary>
public static class StoredStateCodec
{
    /// <summary>The spec's bytes, written once when the transaction is inserted.</summary>
    public static byte[] Spec(TransactionSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        return JsonSerializer.SerializeToUtf8Bytes(spec, TreatyJsonContext.Default.TransactionSpec);
    }

    /// <summary>
    /// The progress's bytes: the whole state without its spec, so a field added to
    /// <see cref="TransactionState"/> is stored without anyone remembering to; compact
    /// (<see cref="StoredJsonContext"/>: no default-valued fields, times as ticks), because every
    /// decision writes it.
    /// </summary>
    public static byte[] Progress(TransactionState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        // A null spec is left out like any default; Read puts the stored one back.
        return JsonSerializer.SerializeToUtf8Bytes(state with { Spec = null! }, StoredJsonContext.Default.TransactionState);
    }

    /// <summary>
    /// The state from its stored parts. An empty <paramref name="spec"/> means <paramref name="progress"/>
    /// is a whole state (how rows were written before the spec was split off).
    /// </summary>
    /// <exception cref="JsonException">The bytes are not a stored state.</exception>
    public static TransactionState Read(ReadOnlySpan<byte> spec, ReadOnlySpan<byte> progress)
    {
        // Reads every form written so far: the whole state (before the spec was split off), the
        // progress with a stub spec and ISO times, and the compact progress.
        var state = JsonSerializer.Deserialize(progress, StoredJsonContext.Default.TransactionState)
            ?? throw new JsonException("A stored transaction state is null.");
        if (spec.IsEmpty)
        {
            return state.Spec is null ? throw new JsonException("A stored transaction state has no spec.") : state;
        }

        var full = JsonSerializer.Deserialize(spec, TreatyJsonContext.Default.TransactionSpec)
            ?? throw new JsonException("A stored transaction spec is null.");
        return state with { Spec = full };
    }
}

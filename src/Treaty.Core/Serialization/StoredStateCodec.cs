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
    /// The progress's bytes: the whole state with the spec cut down to its gid and protocol, so a
    /// field added to <see cref="TransactionState"/> is stored without anyone remembering to.
    /// </summary>
    public static byte[] Progress(TransactionState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        var spec = state.Spec;
        var stub = new TransactionSpec(spec.Gid, spec.Protocol, "null", [], null, null);
        return JsonSerializer.SerializeToUtf8Bytes(state with { Spec = stub }, TreatyJsonContext.Default.TransactionState);
    }

    /// <summary>
    /// The state from its stored parts. An empty <paramref name="spec"/> means <paramref name="progress"/>
    /// is a whole state (how rows were written before the spec was split off).
    /// </summary>
    /// <exception cref="JsonException">The bytes are not a stored state.</exception>
    public static TransactionState Read(ReadOnlySpan<byte> spec, ReadOnlySpan<byte> progress)
    {
        var state = JsonSerializer.Deserialize(progress, TreatyJsonContext.Default.TransactionState)
            ?? throw new JsonException("A stored transaction state is null.");
        if (spec.IsEmpty)
        {
            return state;
        }

        var full = JsonSerializer.Deserialize(spec, TreatyJsonContext.Default.TransactionSpec)
            ?? throw new JsonException("A stored transaction spec is null.");
        return state with { Spec = full };
    }
}

using System.Globalization;
using System.Text;

namespace Treaty.Client;

/// <summary>Filters and paging of <see cref="TreatyClient.ListAsync"/>; every field is optional.</summary>
public sealed record TransactionListQuery
{
    /// <summary>Only transactions in this wire status (<c>pending</c>, <c>running</c>, <c>committed</c>, ...).</summary>
    public string? Status { get; init; }

    /// <summary>Only transactions of this protocol (<c>saga</c>, <c>tcc</c>, <c>2pc</c>, <c>3pc</c>, <c>msg</c>).</summary>
    public string? Protocol { get; init; }

    /// <summary>Only stuck (true) or only not stuck (false) transactions.</summary>
    public bool? Stuck { get; init; }

    /// <summary>Only transactions created at or after this instant.</summary>
    public DateTimeOffset? Since { get; init; }

    /// <summary>Only transactions created before this instant (exclusive).</summary>
    public DateTimeOffset? Until { get; init; }

    /// <summary>Only transactions whose gid contains this text (case-sensitive).</summary>
    public string? GidContains { get; init; }

    /// <summary>Page size; the coordinator caps it.</summary>
    public int? Limit { get; init; }

    /// <summary>The <c>nextCursor</c> of the previous page.</summary>
    public string? Cursor { get; init; }

    internal string ToQueryString()
    {
        var builder = new StringBuilder();
        Append(builder, "status", Status);
        Append(builder, "protocol", Protocol);
        Append(builder, "stuck", Stuck is { } stuck ? (stuck ? "true" : "false") : null);
        Append(builder, "since", Since?.ToString("O", CultureInfo.InvariantCulture));
        Append(builder, "until", Until?.ToString("O", CultureInfo.InvariantCulture));
        Append(builder, "gid", GidContains);
        Append(builder, "limit", Limit?.ToString(CultureInfo.InvariantCulture));
        Append(builder, "cursor", Cursor);
        return builder.ToString();
    }

    private static void Append(StringBuilder builder, string name, string? value)
    {
        if (value is null)
        {
            return;
        }

        builder.Append(builder.Length == 0 ? '?' : '&').Append(name).Append('=').Append(Uri.EscapeDataString(value));
    }
}

using System.Text.RegularExpressions;
using Npgsql;

namespace Treaty.Storage.PostgreSql;

/// <summary>Settings of <see cref="PostgreSqlTransactionStore"/>.</summary>
public sealed partial class PostgreSqlStoreOptions
{
    /// <summary>The Npgsql connection string (host, port, database, user; pooling settings are honoured). Required.</summary>
    public string? ConnectionString { get; set; }

    /// <summary>
    /// The PostgreSQL schema holding the store's tables, created when missing. Lower-case letters,
    /// digits and underscores, at most <see cref="PostgreSqlStoreDefaults.MaxSchemaLength"/> characters.
    /// Default <c>public</c>. Instances that share transactions must name the same schema.
    /// </summary>
    public string Schema { get; set; } = PostgreSqlStoreDefaults.Schema;

    /// <summary>The problems of these settings, or an empty list when they are usable.</summary>
    public IReadOnlyList<string> Validate()
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(ConnectionString))
        {
            problems.Add("PostgreSqlStoreOptions.ConnectionString is required.");
        }
        else
        {
            try
            {
                _ = new NpgsqlConnectionStringBuilder(ConnectionString);
            }
            catch (Exception e) when (e is ArgumentException or FormatException)
            {
                // Neither the text nor the driver's message is repeated: either may hold a password.
                problems.Add("PostgreSqlStoreOptions.ConnectionString is not a valid connection string (Npgsql syntax: Host=...;Port=...;Database=...;Username=...).");
            }
        }

        if (Schema is null || !SchemaName().IsMatch(Schema))
        {
            problems.Add($"PostgreSqlStoreOptions.Schema must be lower-case letters, digits and underscores (starting with a letter or underscore), at most {PostgreSqlStoreDefaults.MaxSchemaLength} characters.");
        }

        return problems;
    }

    [GeneratedRegex("^[a-z_][a-z0-9_]{0,39}$")]
    private static partial Regex SchemaName();
}

/// <summary>Every default of the PostgreSQL store in one place.</summary>
public static class PostgreSqlStoreDefaults
{
    /// <summary>Default schema.</summary>
    public const string Schema = "public";

    /// <summary>Longest schema name (the notification channel adds its prefix within PostgreSQL's 63).</summary>
    public const int MaxSchemaLength = 40;

    /// <summary>Most <see cref="Treaty.Core.Engine.TransactionQuery.Limit"/> honoured by a listing.</summary>
    public const int MaxListLimit = 500;

    /// <summary>Statements prepared automatically per connection (Npgsql <c>Max Auto Prepare</c>) unless the connection string says otherwise.</summary>
    public const int MaxAutoPrepare = 32;

    /// <summary>Largest payload of one notification, in UTF-8 bytes (PostgreSQL's limit is 8000).</summary>
    public const int MaxNotifyPayloadBytes = 7_900;
}

using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Treaty.Core.Engine;

namespace Treaty.Storage.Sqlite;

/// <summary>Registers the SQLite store.</summary>
public static class SqliteStoreServiceCollectionExtensions
{
    /// <summary>
    /// Registers <see cref="SqliteTransactionStore"/> as the <see cref="ITransactionStore"/> (a
    /// singleton), with <see cref="SqliteStoreOptions"/> bound through the options system and
    /// validated at start. The container disposes it, which flushes queued writes.
    /// </summary>
    public static IServiceCollection AddTreatySqliteStore(this IServiceCollection services, Action<SqliteStoreOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = services.AddOptions<SqliteStoreOptions>();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        options.ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<SqliteStoreOptions>, SqliteStoreOptionsValidator>());
        services.TryAddSingleton(provider => new SqliteTransactionStore(
            provider.GetRequiredService<IOptions<SqliteStoreOptions>>().Value,
            provider.GetService<ILogger<SqliteTransactionStore>>() ?? NullLogger<SqliteTransactionStore>.Instance,
            provider.GetService<TimeProvider>() ?? TimeProvider.System));
        services.TryAddSingleton<ITransactionStore>(provider => provider.GetRequiredService<SqliteTransactionStore>());
        return services;
    }
}

/// <summary>Rejects unusable <see cref="SqliteStoreOptions"/> when the host starts.</summary>
internal sealed class SqliteStoreOptionsValidator : IValidateOptions<SqliteStoreOptions>
{
    public ValidateOptionsResult Validate(string? name, SqliteStoreOptions options)
    {
        var problems = options.Validate();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}

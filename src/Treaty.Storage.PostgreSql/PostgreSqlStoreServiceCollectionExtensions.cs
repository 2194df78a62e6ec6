using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Treaty.Core.Engine;

namespace Treaty.Storage.PostgreSql;

/// <summary>Registers the PostgreSQL store.</summary>
public static class PostgreSqlStoreServiceCollectionExtensions
{
    /// <summary>
    /// Registers <see cref="PostgreSqlTransactionStore"/> as the <see cref="ITransactionStore"/> (a
    /// singleton), with <see cref="PostgreSqlStoreOptions"/> bound through the options system and
    /// validated at start. The container disposes it, which sends the queued notifications and
    /// closes its connections.
    /// </summary>
    public static IServiceCollection AddTreatyPostgreSqlStore(this IServiceCollection services, Action<PostgreSqlStoreOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = services.AddOptions<PostgreSqlStoreOptions>();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        options.ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<PostgreSqlStoreOptions>, PostgreSqlStoreOptionsValidator>());
        services.TryAddSingleton(provider => new PostgreSqlTransactionStore(
            provider.GetRequiredService<IOptions<PostgreSqlStoreOptions>>().Value,
            provider.GetService<ILogger<PostgreSqlTransactionStore>>() ?? NullLogger<PostgreSqlTransactionStore>.Instance,
            provider.GetService<TimeProvider>() ?? TimeProvider.System));
        services.TryAddSingleton<ITransactionStore>(provider => provider.GetRequiredService<PostgreSqlTransactionStore>());
        return services;
    }
}

/// <summary>Rejects unusable <see cref="PostgreSqlStoreOptions"/> when the host starts.</summary>
internal sealed class PostgreSqlStoreOptionsValidator : IValidateOptions<PostgreSqlStoreOptions>
{
    public ValidateOptionsResult Validate(string? name, PostgreSqlStoreOptions options)
    {
        var problems = options.Validate();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}

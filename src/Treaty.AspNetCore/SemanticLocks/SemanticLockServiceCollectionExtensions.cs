using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.SemanticLocks;

/// <summary>Registers the semantic locks.</summary>
public static class SemanticLockServiceCollectionExtensions
{
    /// <summary>
    /// Registers <see cref="SemanticLockManager"/> (a singleton) with <see cref="SemanticLockOptions"/>
    /// validated at start, and creates <c>treaty_semantic_locks</c> in the registered
    /// <see cref="ParticipantDatabase"/> when the host starts. A <see cref="TimeProvider"/> is added
    /// when there is none.
    /// </summary>
    public static IServiceCollection AddTreatySemanticLocks(this IServiceCollection services, Action<SemanticLockOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = services.AddOptions<SemanticLockOptions>();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        options.ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<SemanticLockOptions>, SemanticLockOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton(provider => new SemanticLockManager(
            provider.GetRequiredService<IOptions<SemanticLockOptions>>().Value,
            provider.GetRequiredService<TimeProvider>(),
            provider.GetService<ILogger<SemanticLockManager>>()));
        services.AddHostedService<SemanticLockSchemaInitializer>();
        return services;
    }
}

/// <summary>Rejects unusable <see cref="SemanticLockOptions"/> when the host starts.</summary>
internal sealed class SemanticLockOptionsValidator : IValidateOptions<SemanticLockOptions>
{
    public ValidateOptionsResult Validate(string? name, SemanticLockOptions options)
    {
        var problems = options.Validate();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}

/// <summary>Creates the semantic lock table before the server takes calls.</summary>
internal sealed class SemanticLockSchemaInitializer(ParticipantDatabase database, ILogger<SemanticLockSchemaInitializer> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await SemanticLockManager.EnsureSchemaAsync(database, cancellationToken);
        SemanticLockLog.SchemaReady(logger, database.Dialect);
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}

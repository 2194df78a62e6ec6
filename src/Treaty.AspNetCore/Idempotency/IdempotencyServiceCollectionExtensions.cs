using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.Idempotency;

/// <summary>Registers the idempotency-key middleware's services.</summary>
public static class IdempotencyServiceCollectionExtensions
{
    /// <summary>
    /// Registers the idempotency middleware, its key store in the application's
    /// <see cref="ParticipantDatabase"/> (which the application registers), and the hosted
    /// service that creates the key table at start and sweeps expired keys.
    /// <see cref="IdempotencyOptions"/> are validated at start.
    /// </summary>
    public static IServiceCollection AddTreatyIdempotency(this IServiceCollection services, Action<IdempotencyOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = services.AddOptions<IdempotencyOptions>();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        options.ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<IdempotencyOptions>, IdempotencyOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton(provider => new IdempotencyStore(
            provider.GetService<ParticipantDatabase>()
                ?? throw new InvalidOperationException("AddTreatyIdempotency needs a ParticipantDatabase in DI (for example SqliteParticipantDatabase or PostgreSqlParticipantDatabase)."),
            provider.GetRequiredService<TimeProvider>(),
            provider.GetRequiredService<IOptions<IdempotencyOptions>>(),
            provider.GetRequiredService<ILogger<IdempotencyStore>>()));
        services.TryAddSingleton<IdempotencyMiddleware>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, IdempotencySweeper>());
        return services;
    }
}

/// <summary>Rejects unusable <see cref="IdempotencyOptions"/> when the host starts.</summary>
internal sealed class IdempotencyOptionsValidator : IValidateOptions<IdempotencyOptions>
{
    public ValidateOptionsResult Validate(string? name, IdempotencyOptions options)
    {
        var problems = options.Validate();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}

using Microsoft.Extensions.DependencyInjection;

namespace Treaty.Client;

/// <summary>Registers <see cref="TreatyClient"/> in a service collection.</summary>
public static class TreatyClientServiceCollectionExtensions
{
    /// <summary>
    /// Registers one <see cref="TreatyClient"/> singleton for the coordinator at
    /// <paramref name="coordinator"/>, with its own long-lived <see cref="HttpClient"/> (disposed with
    /// the container) and the registered <see cref="TimeProvider"/>, if any.
    /// </summary>
    public static IServiceCollection AddTreatyClient(this IServiceCollection services, Uri coordinator) =>
        services.AddTreatyClient(coordinator, apiKey: null);

    /// <summary>
    /// Registers one <see cref="TreatyClient"/> singleton for the coordinator at
    /// <paramref name="coordinator"/> that sends <paramref name="apiKey"/> as <c>Authorization: Bearer</c>.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="coordinator">The coordinator's absolute address.</param>
    /// <param name="apiKey">A client key (<c>--api-key</c>) of the coordinator; null or empty sends none.</param>
    public static IServiceCollection AddTreatyClient(this IServiceCollection services, Uri coordinator, string? apiKey)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(coordinator);
        if (!coordinator.IsAbsoluteUri)
        {
            throw new ArgumentException("The coordinator's address must be absolute.", nameof(coordinator));
        }

        services.AddSingleton(provider =>
        {
            var timeProvider = provider.GetService<TimeProvider>() ?? TimeProvider.System;
            return TreatyClient.Create(coordinator, timeProvider, apiKey);
        });
        return services;
    }
}

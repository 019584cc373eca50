//! The exposition format of a scrape, negotiated from its `Accept` header.

/// The exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: no exemplars, counters typed under their
    /// `_total` names.
    Text,
    /// OpenMetrics 1.0.0 text, with exemplars.
    OpenMetrics,
}

impl Format {
    /// Picks the format for a request's `Accept` header the way Prometheus's
    /// Go client does: the media ranges by falling quality, the first that
    /// names OpenMetrics or plain text wins; anything else gets plain text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut ranges: Vec<(f64, &str)> = accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?;
                let mut quality = 1.0;
                for parameter in parts {
                    if let Some((key, value)) = parameter.split_once('=') {
                        if key.trim().eq_ignore_ascii_case("q") {
                            quality = value.trim().parse().unwrap_or(0.0);
                        }
                    }
                }
                (quality > 0.0).then_some((quality, media))
            })
            .collect();
        // Stable: equal qualities keep the client's order.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, media) in ranges {
            if media.eq_ignore_ascii_case("application/openmetrics-text") {
                return Format::OpenMetrics;
            }
            if media.eq_ignore_ascii_case("text/plain") {
                return Format::Text;
            }
        }
        Format::Text
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Format;

    #[test]
    fn plain_text_unless_openmetrics_is_asked_for() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/json")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // What Prometheus 2.x and 3.x send by default.
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
            application/openmetrics-text;version=0.0.1;q=0.4,\
            text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        // Quality decides, not order; q=0 means "not this".
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.2, text/plain;q=0.9")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.1, Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Text
        );
    }

    #[test]
    fn content_types_name_the_version() {
        assert_eq!(
            Format::Text.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(
            Format::OpenMetrics
                .content_type()
                .starts_with("application/openmetrics-text; version=1.0.0")
        );
    }
}

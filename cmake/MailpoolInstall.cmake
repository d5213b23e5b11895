# Install rules for what is not a build target: systemd units, sysusers.d and
# tmpfiles.d entries, the optional sendmail/mailq links and the CMake
# package configuration (find_package(mailpool) -> mailpool::mailpool).
# Included from the top-level CMakeLists.txt after the targets exist.

include(CMakePackageConfigHelpers)

# The daemon reads /etc/mailpool/mailpool.conf by default (common/proto.h),
# whatever the prefix, so the example goes there.
set(MAILPOOL_CONFDIR /etc/mailpool CACHE PATH "Install directory for the example mailpool.conf")
install(FILES ${PROJECT_SOURCE_DIR}/etc/mailpool.conf DESTINATION ${MAILPOOL_CONFDIR})

option(MAILPOOL_INSTALL_SENDMAIL_LINKS
       "Install sendmail (sbin) and mailq (bin) as links to mailpool-sendmail" OFF)

# systemd reads its directories at fixed places whatever the prefix, so ask
# systemd's pkg-config file; without it fall back to prefix-relative ones.
function(mailpool_systemd_dir out pcvar fallback)
  set(dir "")
  if(PKG_CONFIG_FOUND)
    pkg_get_variable(dir systemd ${pcvar})
  endif()
  if(NOT dir)
    set(dir ${fallback})
  endif()
  set(${out} "${dir}" CACHE PATH "Install directory for ${pcvar}")
endfunction()
mailpool_systemd_dir(MAILPOOL_SYSTEMDUNITDIR systemdsystemunitdir lib/systemd/system)
mailpool_systemd_dir(MAILPOOL_SYSUSERSDIR sysusersdir lib/sysusers.d)
mailpool_systemd_dir(MAILPOOL_TMPFILESDIR tmpfilesdir lib/tmpfiles.d)

file(GLOB MAILPOOL_UNITS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/systemd/*.service
     ${PROJECT_SOURCE_DIR}/systemd/*.socket)
if(MAILPOOL_UNITS)
  install(FILES ${MAILPOOL_UNITS} DESTINATION ${MAILPOOL_SYSTEMDUNITDIR})
endif()
install(FILES ${PROJECT_SOURCE_DIR}/packaging/mailpool.sysusers DESTINATION ${MAILPOOL_SYSUSERSDIR}
        RENAME mailpool.conf)
install(FILES ${PROJECT_SOURCE_DIR}/packaging/mailpool.tmpfiles DESTINATION ${MAILPOOL_TMPFILESDIR}
        RENAME mailpool.conf)

# Relative links, so they stay right under DESTDIR and in the package.
if(MAILPOOL_INSTALL_SENDMAIL_LINKS)
  set(links ${CMAKE_CURRENT_BINARY_DIR}/sendmail-links)
  file(MAKE_DIRECTORY ${links}/sbin ${links}/bin)
  file(RELATIVE_PATH to_bin /root/${CMAKE_INSTALL_SBINDIR} /root/${CMAKE_INSTALL_BINDIR})
  file(CREATE_LINK ${to_bin}/mailpool-sendmail ${links}/sbin/sendmail SYMBOLIC)
  file(CREATE_LINK mailpool-sendmail ${links}/bin/mailq SYMBOLIC)
  install(FILES ${links}/sbin/sendmail DESTINATION ${CMAKE_INSTALL_SBINDIR})
  install(FILES ${links}/bin/mailq DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# The package config is relocatable: every path is relative to where it is
# installed, so `cmake --install --prefix` and the .deb need no reconfigure.
set(MAILPOOL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/mailpool)
install(EXPORT mailpoolTargets NAMESPACE mailpool:: DESTINATION ${MAILPOOL_CMAKEDIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/packaging/mailpoolConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/mailpoolConfig.cmake
                              INSTALL_DESTINATION ${MAILPOOL_CMAKEDIR})
# 0.x: a minor release may change the API.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/mailpoolConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/mailpoolConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/mailpoolConfigVersion.cmake
        DESTINATION ${MAILPOOL_CMAKEDIR})
